"""``python -m demo.correspondence``: correspondence analysis (Zeiler & Fergus, Sec. 5, Table 1 and Fig. 8).

    python -m demo.correspondence --boxes examples/cat12_parts.json --out out/correspondence
    python -m demo.correspondence --boxes parts.json --draws 20 --seed 1 --layers conv3_3,conv5_3,pooled --out out

Does the network relate the same object part across different images? In each image of a set (one class), one
part (e.g. the left eye) is covered by a grey box: the data set's mean colour, i.e. zero in the normalised input,
as ``demo.analyses.occlusion`` does. For image i and layer l, ``eps_i = x_i - x~_i`` is the feature vector of the
original minus that of the occluded image, and the consistency of the part over the N images that have it is

    Delta_l = sum over ordered pairs i != j of H(sign(eps_i), sign(eps_j)) / (N (N - 1) D)

with H the Hamming distance (the number of the D features whose signs differ) and sign(0) = 0 a value of its own:
a mean in [0, 1], the fraction of (pair, feature) combinations whose signs disagree (the paper reports the
unnormalised sum). A lower Delta for the part than for boxes of the same size at random places means that
occluding the part changes the features in the same way in every image: the network relates that part across
images. Differences of at most ``tolerance`` times the largest value of the original's feature vector count as 0
(float rounding, which can differ between batch sizes on a GPU).

Baseline: in each image, a box of the part's size (in input pixels) at a uniformly random position inside the
input; ``draws`` independent draws (seeded), each giving one Delta; reported as their mean and sample standard
deviation (ddof = 1).

Layers: any conv layer (activations after ReLU, flattened C * h * w) and ``pooled``, the feature vector the
classifier reads: for the global-max-pool head (``gmp``) the per-channel maximum of conv5_3 (512 values); for
torchvision's head the flattened adaptive-average-pooled features (512 * 7 * 7); both computed in NumPy from the
conv5_3 activation.

Boxes: a JSON file ``{"image path": {"left_eye": [x0, y0, x1, y1], "right_eye": [...], "nose": [...]}, ...}``;
paths relative to the JSON file's folder, or absolute; keys starting with ``_`` are comments. A box is in pixel
coordinates of the original (upright, EXIF-rotated) image: (x0, y0) its top-left corner, (x1, y1) its bottom-right
corner, covering the pixels x0 <= x < x1, y0 <= y < y1 (a PIL crop box). Any part names work (at least two
images each); "left" and "right" are best read as the animal's own sides (its left eye appears on the image's
right in a frontal view), which the shipped ``examples/cat12_parts.json`` uses. Each box is mapped through the
preprocessing's resize and centre crop (``boxes.box_to_input``) and covers every input pixel it touches; a box
partly outside the crop is clipped; one entirely outside is skipped for that image, with a warning line.

Writes into DIR: ``correspondence.csv`` (one row per part and layer: part, layer, delta, random_mean, random_std,
images; ``#`` lines above the header say what the numbers are), ``correspondence_chart.png`` (Delta against the
random baseline per part and layer, drawn from the numbers alone: no photos, so it can be published with the
code) and ``correspondence.png`` (the masked images, rows: images, columns: the original and each masked part,
above the same chart: it shows the data set's photos, so it belongs in the user's own folder), and prints the
table.

The package: ``boxes`` (the boxes file and the box geometry), ``measure`` (signs, Delta, the random baseline and
the feature functions), ``table`` (the text table and the CSV), ``figure`` (the chart and the figure), ``cli``
(the command).
"""
