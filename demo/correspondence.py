"""``python -m demo.correspondence``: correspondence analysis (Zeiler & Fergus, Sec. 5, Table 1); see
``demo.analyses.correspondence``."""

import sys

from demo.analyses.correspondence.cli import main

if __name__ == "__main__":
    sys.exit(main())
