"""``python -m demo.occlusion``: occlusion sensitivity (Zeiler & Fergus, Fig. 7); see ``demo.analyses.occlusion``."""

import sys

from demo.analyses.occlusion.cli import main

if __name__ == "__main__":
    sys.exit(main())
