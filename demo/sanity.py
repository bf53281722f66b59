"""``python -m demo.sanity``: sanity checks for saliency maps (model and data randomization, Adebayo et al. 2018;
class sensitivity, Nie et al. 2018 and Sixt et al. 2020); see ``demo.analyses.sanity``."""

import sys

from demo.analyses.sanity.cli import main

if __name__ == "__main__":
    sys.exit(main())
