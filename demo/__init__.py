"""The demo: onnxruntime forward pass, NumPy deconvnet and display code; no deep-learning framework.

Data flow (one module per step): ``preprocess`` (image -> (1, 3, H, W)) -> ``onnx_forward`` (probabilities,
activations, switches, conv weights) -> ``deconv_numpy`` (projections to pixel space) -> ``display``
(normalisation, tiles, grids) -> the UI. ``visualize`` and ``predict`` are headless command-line tools over
the same functions. Nothing in ``demo/`` imports torch.
"""
