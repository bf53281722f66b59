"""``python -m demo.health``: dead and rare channels, peaks and filter norms per layer, and the conv1_1 filters
(Zeiler & Fergus, Fig. 6); see ``demo.analyses.health`` (``--engine ray``: ``demo.analyses.ray_engine``)."""

import sys

from demo.analyses.health.cli import main

if __name__ == "__main__":
    sys.exit(main())
