"""``python -m demo.mine``: the top-9 atlas of a data set (Zeiler & Fergus, Fig. 2); see ``demo.analyses.atlas``."""

import sys

from demo.analyses.atlas.cli import main

if __name__ == "__main__":
    sys.exit(main())
