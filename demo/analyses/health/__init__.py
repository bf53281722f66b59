"""``python -m demo.health``: the model's health, layer by layer (Zeiler & Fergus, Fig. 6 and Sec. 4.1).

    python -m demo.health --data ../shared/data/cat12 --out out/health
    python -m demo.health --data photos/ --model my_model.onnx --limit 500 --out out/health
    python -m demo.health --data photos/ --out out/health --engine ray --address auto   # on a Ray cluster

The paper looked at its first-layer filters (Fig. 6a-c) and saw what was wrong with the architecture: a few
filters dominating, dead filters, too little coverage of the middle frequencies. It fixed them with a smaller
first stride and filter size and a clipping of filter norms ("feature scale clipping"). This command measures the
same symptoms on every conv layer of a model:

- **dead** channels: never above zero on the data set (after the ReLU), so they never reach the next layer;
- **rare** channels: above zero somewhere on fewer than ``--rare`` (default 1 %) of the images, dead ones not
  counted;
- the distribution of the channels' **peaks** (each channel's largest activation over the data set; dead: 0):
  quantiles, and a histogram per layer in the figure;
- the distribution of the **filter norms** (the L2 norm of each output filter of the batch-norm-folded weights,
  (C_out, C_in, 3, 3) -> (C_out,)): one filter far above the others dominates its layer (the paper's Fig. 6a);
- the **conv1_1 filters** as colour pictures (Fig. 6c), which need only the model.

One streaming pass over the data set (``demo.analyses.dataset``: decoding threads and, for all 13 layers, only the
per-image per-channel maxima (N, C) leave onnxruntime, never the full maps). Writes into ``--out``:

    health.csv          one row per layer (``measure.CSV_COLUMNS``)
    health.json         per layer and channel: peak, mean per-image maximum, firing count, filter norm; the number
                        of images, the model and its SHA-1 (enough to redraw the figure: ``files.load_health``)
    health.png          dead / rare share per layer, peaks and filter norms per layer
    conv1_filters.png   the 64 conv1_1 filters, each min-max normalised over its 3 x 3 x RGB values, enlarged

``view.health_view`` is what the app shows: the conv1_1 filters always, the rest from a ``--out`` folder.

The package: ``measure`` (the streaming pass and the per-layer statistics), ``files`` (the files of ``--out``,
written and read back), ``figure`` (the per-layer figure and the conv1_1 filter picture), ``summary`` (the
Markdown summary), ``view`` (the app's view), ``cli`` (the command).
"""
