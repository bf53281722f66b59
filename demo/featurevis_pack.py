"""``python -m demo.featurevis_pack``: pack a feature-visualization run into the compact shipped set
(``models/featurevis``); see ``demo.analyses.featurevis.shipped``."""

import sys

from demo.analyses.featurevis.cli import pack_main as main

if __name__ == "__main__":
    sys.exit(main())
