"""``python -m demo.invariance``: invariance curves (Zeiler & Fergus, Fig. 5); see ``demo.analyses.invariance``."""

import sys

from demo.analyses.invariance.cli import main

if __name__ == "__main__":
    sys.exit(main())
