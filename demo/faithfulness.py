"""``python -m demo.faithfulness``: deletion, insertion and ROAD scores of the evidence maps; see
``demo.analyses.evidence.cli``."""

import sys

from demo.analyses.evidence.cli import main

if __name__ == "__main__":
    sys.exit(main())
