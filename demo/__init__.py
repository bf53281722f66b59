"""The demo: onnxruntime forward pass, NumPy deconvnet, display, the analyses and the app; no deep-learning framework.

The inference chain, one module per step: ``preprocess`` (image -> (1, 3, H, W)) -> ``onnx_forward``
(probabilities, activations, switches, conv weights) -> ``deconv_numpy`` (projections to pixel space, with the
transposed-convolution kernels in ``deconv_kernels`` and the class-score head in ``head_numpy``) -> ``display``
(normalisation, tiles, grids, receptive-field windows).

Around it: ``cli`` (what every command line shares), ``visualize`` and ``predict`` (headless commands over the same
functions), ``analyses/`` (the paper's atlas, occlusion and invariance, and the checks that go beyond it, each
with its command: ``python -m demo.<name>``) and ``app/`` (what only the Gradio app needs). Nothing in ``demo/``
imports torch.
"""
