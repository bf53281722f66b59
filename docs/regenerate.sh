#!/usr/bin/env bash
# Regenerates every figure and table in docs/ that shows the default model, from its training run and its file:
#   bash docs/regenerate.sh                      # RUN=runs/cat12_v2, the data in ../shared/data/cat12
#   FEATUREVIS=0 bash docs/regenerate.sh         # without step 7, the feature visualizations (hours)
# The held-out accuracy (with and without flip TTA, per breed) goes to docs/heldout.txt for the model card.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/cat12_v2}
DATA=${DATA:-../shared/data/cat12}
export GRADIO_ANALYTICS_ENABLED=False
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. The held-out split: accuracy without and with flip TTA, per breed, the confusion matrix.
python -m demo.predict --labels "$RUN/val_list.txt" --tta --csv "$tmp/val.csv" --confusion-png docs/confusion_val.png \
  | tee docs/heldout.txt
# 2. The run's curves and metrics.
cp "$RUN/curves.png" docs/training_curves.png
cp "$RUN/metrics.csv" docs/training_metrics.csv
# 3. Feature evolution (the paper's Fig. 4): the probe's 13 projections, one row per snapshot, every 8 epochs.
python - "$RUN" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

rows = sorted(Path(sys.argv[1], "evolution").glob("epoch_*.png"))
keep = [p for p in rows if int(p.stem.split("_")[1]) % 8 == 0 or p == rows[-1]]
pictures = [np.asarray(Image.open(p).convert("RGB")) for p in keep]
width = max(p.shape[1] for p in pictures)
pictures = [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in pictures]
Image.fromarray(np.concatenate(pictures)).save("docs/feature_evolution.png", optimize=True)
print(f"feature evolution: {', '.join(p.stem for p in keep)}")
PY
# 4. The analyses of the CC0 cat and of the data set.
python -m demo.occlusion examples/chelsea.png --size 48 --stride 16 --out "$tmp/occlusion"
cp "$tmp/occlusion/occlusion.png" docs/occlusion_chelsea.png
python -m demo.sanity examples/chelsea.png --mode both --out "$tmp/sanity_layer"
python -m demo.sanity examples/chelsea.png --target class --mode both --out "$tmp/sanity_class"
python - "$tmp" <<'PY'
import sys

import numpy as np
from PIL import Image

from demo.analyses.sanity.figure import stack

parts = [np.asarray(Image.open(f"{sys.argv[1]}/sanity_{target}/sanity_{part}.png").convert("RGB"))
         for target in ("layer", "class") for part in ("filmstrip", "curves")]  # cascading filmstrip, both modes' curves
Image.fromarray(stack(parts)).save("docs/sanity_chelsea.png", optimize=True)
PY
cp "$tmp/sanity_layer/sanity.csv" docs/sanity_chelsea_conv5_3.csv
cp "$tmp/sanity_class/sanity.csv" docs/sanity_chelsea_class.csv
cp "$tmp/sanity_class/sanity_classes.csv" docs/sanity_chelsea_classes.csv
python -m demo.correspondence --boxes examples/cat12_parts.json --out "$tmp/correspondence"
cp "$tmp/correspondence/correspondence_chart.png" "$tmp/correspondence/correspondence.csv" docs/
python -m demo.health --data "$DATA" --out "$tmp/health"
cp "$tmp/health/health.png" "$tmp/health/conv1_filters.png" "$tmp/health/health.csv" docs/
# 5. The app's screenshots, in headless Chromium; the last beside the network with random weights.
python docs/screenshots.py
python -m export --random --batch-norm --input-size 112 --out "$tmp/random.onnx"
python docs/screenshots.py --compare "$tmp/random.onnx"
python docs/screenshots.py --units
# 6. The evidence methods over held-out images (an hour or more on 2 cores): the sanity checks (3 seeds) and the
#    faithfulness scores, their summaries, the README's table (printed) and the app's Evidence-tab summaries.
python -m demo.sanity docs/heldout_val.txt --root "$DATA" --limit "${METHOD_IMAGES:-50}" --seeds 0,1,2 --target class \
  --steps 1,4 --methods deconvnet,guided,gradient,gradcam,guided-gradcam,gradient-x-input,smoothgrad,ig,occlusion,random,edges \
  --samples 8 --ig-steps 8 --out "$tmp/methods_sanity"
python -m demo.faithfulness docs/heldout_val.txt --root "$DATA" --limit "${METHOD_IMAGES:-50}" --target label \
  --out "$tmp/methods_faithfulness"
cp "$tmp/methods_sanity/summary.md" docs/methods_sanity.md
cp "$tmp/methods_faithfulness/summary.md" docs/methods_faithfulness.md
cp "$tmp/methods_faithfulness/faithfulness.csv" docs/methods_faithfulness.csv
python docs/methods_table.py "$tmp/methods_sanity" "$tmp/methods_faithfulness" --merge docs
# 7. The shipped feature visualizations (models/featurevis/), the README's feature-visualization figure and its
#    measures on randomized models: no cat-12 needed, hours on 2 cores, resumable (docs/featurevis.sh).
if [ "${FEATUREVIS:-1}" != 0 ]; then bash docs/featurevis.sh; fi
chmod 644 docs/*.png docs/*.csv docs/*.txt
echo "docs/ regenerated from $RUN and models/vgg16_cat12.onnx"
