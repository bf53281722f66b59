"""``python -m demo.featurevis``: feature visualization by optimisation; see ``demo.analyses.featurevis``."""

import sys

from demo.analyses.featurevis.cli import main

if __name__ == "__main__":
    sys.exit(main())
