"""``python -m demo.sanity``: sanity checks for saliency maps, on the deconvnet's projections and any method.

    python -m demo.sanity cat.jpg --out out/sanity
    python -m demo.sanity cat.jpg --target class --mode both --out out/sanity
    python -m demo.sanity cat.jpg --target conv5_3/85 --methods guided,gradient --seed 1 --out out/sanity
    python -m demo.sanity cat.jpg --target class --methods gradient,gradcam,smoothgrad,ig,edges --out out/sanity
    python -m demo.sanity docs/heldout_val.txt --root ../shared/data/cat12 --limit 50 --seeds 0,1,2 \\
        --target conv5_3,class --steps 1,2,7,14 --out out/sanity_heldout          # mean +- sd
    python -m demo.sanity docs/heldout_val.txt --root ../shared/data/cat12 --target class --steps 0 \\
        --no-classes --compare-model shuffled.onnx --out out/sanity_data          # data randomization

Three checks, computed on the ONNX model without torch:

- model randomization (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, *Sanity Checks for Saliency Maps*,
  NeurIPS 2018, arXiv 1810.03292): a map that explains what a network learned must change when the learned
  weights are replaced by random ones;
- data randomization (the same paper's second test): the maps of a network trained on permuted labels
  (``python -m model.train --shuffle-labels``) must differ from the real network's (``--compare-model``);
- class sensitivity (Nie, Zhang & Patel, *A Theoretical Explanation for Perplexing Behaviors of
  Backpropagation-based Visualizations*, ICML 2018, arXiv 1805.07039: guided backpropagation and the deconvnet
  barely depend on the class; Sixt, Granz & Landgraf, *When Explanations Lie*, ICML 2020, arXiv 1912.09818: the
  random-logit test): a class's map must depend on the class.

**Methods.** A method is a function of (the model under test, the image, the target) returning a map
(``measure.SanityMethod``; ``measure.METHODS`` lists them, ``measure.register_method`` adds one). The model under
test is an ``OnnxModel`` (its ``run``, ``weights`` and ``head``): the trained one, a randomized copy or the other
model. The three backward rules (``base.spec.RULES``: deconvnet, guided, gradient) are the first entries and map
every target (conv layers, channels, classes). The evidence methods of ``demo.analyses.evidence`` follow
(``measure.EVIDENCE``: gradcam, guided-gradcam, gradient-x-input, smoothgrad, ig, occlusion, and the baselines
random and edges): they map class targets only (``--target class`` or ``class/CLASS``; a conv target with one of
them is an error), each as its (H, W) map from the evidence registry computed on the model under test. The
baselines read no weights, so they must fail the checks: their maps stay the same at every step and for every
class. Any other method that computes a map from an ``OnnxModel``, an image and a class joins the same way.

**Model randomization.** A layer is re-drawn from the distribution training initialises it with
(``model.vgg.VGG._init_weights``): a conv weight (C_out, C_in, 3, 3) ~ N(0, 2 / (9 C_out)) (Kaiming normal, mode
fan_out, ReLU gain), a Linear weight ~ N(0, 0.01^2), every bias 0. Batch norm is folded into the exported convs,
so the folded weight is re-drawn and its bias set to 0 (a randomized conv has no batch norm). ``"head"`` is the
class head's Linear layers, all of them together. The draws are seeded per layer: layer i of ``ORDER`` comes from
``np.random.default_rng((seed, i))``, the same arrays in every step and both modes.

- cascading: step 0 is the trained model; step k randomizes the first k layers of ``ORDER`` = (head, conv5_3,
  conv5_2, ..., conv1_1), from the top down: 14 steps, the last one with every layer random;
- independent: step k randomizes only layer k of ``ORDER``, the others trained (step 0: the trained model).

The randomized network runs in onnxruntime: a copy of the ModelProto whose weight and bias initializers (found by
following the Conv, Gemm and MatMul inputs of the graph through Identity nodes) are replaced by the draws,
serialised and loaded from bytes into a new session with the trained model's providers, provider options and threads
(``OnnxModel.new_session``); no re-export. The weights are part of the graph, so every execution provider (CUDA
included) and every graph optimisation computes with them; ``SessionOptions.add_initializer`` overrides, by
contrast, are ignored by the CUDA provider and by the CPU's ``NchwcTransformer`` (onnxruntime 1.31). Each randomized
step is checked layer by layer (``randomize.check_randomized``): every randomized conv's activation, recomputed in
NumPy at a few positions from the step's own input to it, must be nearer the drawn weights' than the trained
weights', and must differ from the trained pass's (the head: its probabilities); otherwise the run stops with
RuntimeError. Step 0 runs in a session built the same way, so that the layers a step leaves trained compute bit for
bit what they compute at step 0. The NumPy deconvnet (``demo.backward.deconvnet.Deconvnet``) projects with the same
randomized conv weights, and class targets go through the same randomized head.

**Targets** (``--target``):

- ``conv5_3`` (any conv layer): the whole-layer projection (``Deconvnet.project``, mode "layer");
- ``conv5_3/85``: channel 85's strongest activation projected alone (mode "channel"), in each step the strongest
  activation of that channel in that step's own forward pass;
- ``class``: the logit (before softmax) of the class the trained model ranks first, projected with
  ``Deconvnet.project_class`` (by the rules; the evidence methods map it their own way); ``class/3`` or
  ``class/Bengal``: that class. The same class index in every step.

The conv targets are for the backward rules only.

**An exact shortcut.** A conv target's projection reads the activations and switches at and below its layer,
which depend only on the weights at and below it, and the weights at and below it: randomizing the head or a conv
above the target changes none of these numbers. Such steps reuse the trained maps (similarity exactly 1) and cost
no forward pass. A class target depends on every layer; nothing is reused for it.

**Similarity** of a step's map p to the trained model's map q (same target, method and input; both (C, H, W)):

- ``spearman_abs``: Spearman's rank correlation (``scipy.stats.spearmanr``, ties ranked by their mean) of |p|
  and |q|, flattened (C H W values each);
- ``spearman``: the same of the signed values;
- ``ssim``: ``skimage.metrics.structural_similarity`` of m(p) and m(q), data_range 1, skimage's defaults (7x7
  uniform window), where m(p) = sum_c |p_c| / max_(y, x) sum_c |p_c| is the (H, W) map in [0, 1] (all zero stays
  zero).

Identical maps score exactly 1 (scipy's rank correlation of an array with itself can round to 1 - 1e-16). A
constant map has no rank correlation: NaN.

**Class sensitivity** (on the trained model; Nie et al. 2018, Sixt et al. 2020): for each method, the similarity
(the same three numbers) between the map of the trained model's top-1 class and that of each other class. A map
that does not depend on the class scores 1 for every class; the summary reports the mean over the other classes,
the expected result of Sixt et al.'s random-logit test (the top logit's map against a random other logit's).

**Data randomization** (``--compare-model OTHER.onnx``): each method's map of each target under the trained
model against the same map (same image, same class index: the trained model's top-1) under the other model.

**Many images and seeds.** With several images, a label file or a folder (``--root``: where a label file's
relative paths start; ``--limit N``: N images round-robin over the labels), several seeds (``--seeds 0,1,2``),
several targets or ``--compare-model``, the command reports mean +- sd per target, mode, step and method over the
(image, seed) pairs (``verdicts``), with a progress bar over them, and rewrites its files after each image (a run
cut short keeps what it finished). ``--steps 1,2,7,14`` computes only those steps (step 0 always). Files in DIR:
``sanity_rows.csv`` (image, seed, target, mode, step, randomized, method, spearman_abs, spearman, ssim),
``sanity_summary.csv`` (target, mode, step, randomized, method, metric, mean, sd over every pair, sd_images: of the
per-image means, sd_seeds: of the per-seed means, n), ``sanity_classes_rows.csv`` / ``_summary.csv`` (per image
the mean over the other classes; mean +- sd over images), ``sanity_compare_rows.csv`` / ``_summary.csv``, and
``summary.md`` (the tables in Markdown). An image that cannot be read is one ``skipped ...`` line.

With one image and one seed it writes into DIR: ``sanity.csv`` (columns mode, step, randomized, rule, spearman_abs,
spearman, ssim: one row per mode, step and rule; ``randomized`` the randomized layers joined by "+", "none" at step
0), ``sanity_classes.csv`` (rule, class, name, spearman_abs, spearman, ssim; the top-1 class's row is 1),
``sanity_filmstrip.png`` (rows: rules; columns: steps; each tile a map normalised by ``demo.display``, captioned
with its spearman_abs), ``sanity_filmstrip_independent.png`` (with ``--mode both``), ``sanity_curves.png``
(similarity against step, one panel per metric, one line per rule and mode; and the class sensitivity),
``sanity.png`` (filmstrip above curves), ``sanity.npz`` (the input and every map, float32 (3, H, W), keyed
``MODE/STEP/RULE``).

The package: ``randomize`` (the graph's parameter slots, the seeded draws, the onnxruntime session of the graph
with replaced initializers, the per-layer check, the randomized deconvnet), ``measure`` (targets, methods,
similarity, the cascading and independent runs, the class sensitivity, the comparison with another model, the
result), ``verdicts`` (many images and seeds:
the image list, the run, mean +- sd, the files), ``figure`` (filmstrip, curves, stack), ``view`` (the app's view
and the Markdown summary), ``cli`` (the command).
"""
