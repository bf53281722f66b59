"""``python -m demo.predict``: classify images with an exported model, write a CSV, score against labels;
see ``demo.analyses.predict``."""

import sys

from demo.analyses.predict.cli import main

if __name__ == "__main__":
    sys.exit(main())
