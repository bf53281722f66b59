#!/usr/bin/env bash
# Regenerates the shipped feature visualizations of the default model (models/featurevis/), without cat-12:
#   bash docs/featurevis.sh                 # OUT=out/featurevis (ignored by git), resumable: rerun to continue
# 1. the pictures (hours on a 2-core CPU; every finished target is kept, rerun with the same line to go on):
#    the 12 class logits, then conv5_3, conv4_3 and conv3_3 channels in channel order, 64 Adam steps at 96 px;
# 2. the compact committed set: WebP pictures and models/featurevis/index.json (what the app shows), added to the
#    set already there when it was made from the same model with the same settings.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/featurevis}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
"$PYTHON" -m demo.featurevis class/all conv5_3/all conv4_3/all conv3_3/all --steps 64 --size 96 --batch 16 --seed 0 \
  --resume --out "$OUT"
"$PYTHON" -m demo.featurevis_pack "$OUT" models/featurevis
# 3. The README's figure: four conv5_3 units' pictures beside their projections on the CC0 cat, and the same units
#    made again on cascading-randomized models; those four and conv5_3's first 32 channels measured on every model
#    (the objective each picture reaches, the trained unit's objective on it, SSIM to the trained picture).
"$PYTHON" -m demo.featurevis_figure examples/chelsea.png --steps 64 --size 96 --pictures "$OUT" \
  --score conv5_3/0-31 --out docs/featurevis_chelsea.png --csv docs/featurevis_randomized.csv
