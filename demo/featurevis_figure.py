"""``python -m demo.featurevis_figure``: the README's feature-visualization figure; see
``demo.analyses.featurevis.figure``."""

import sys

from demo.analyses.featurevis.cli import figure_main as main

if __name__ == "__main__":
    sys.exit(main())
