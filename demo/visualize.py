"""``python -m demo.visualize``: deconvnet reconstructions of an image, layer by layer (Zeiler & Fergus,
Fig. 3); see ``demo.analyses.visualize``."""

import sys

from demo.analyses.visualize.cli import main

if __name__ == "__main__":
    sys.exit(main())
