"""``python -m demo.sanity``: sanity checks for saliency maps (Adebayo et al. 2018); see ``demo.analyses.sanity``."""

import sys

from demo.analyses.sanity.cli import main

if __name__ == "__main__":
    sys.exit(main())
