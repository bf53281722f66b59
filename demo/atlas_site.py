"""``python -m demo.atlas_site ATLAS_DIR``: (re)write the static site of a top-9 atlas (Zeiler & Fergus, Fig. 2);
see ``demo.analyses.atlas.site``."""

import sys

from demo.analyses.atlas.cli import site_main as main

if __name__ == "__main__":
    sys.exit(main())
