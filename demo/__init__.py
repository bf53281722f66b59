"""The demo: onnxruntime forward pass, NumPy deconvnet, display, the analyses and the app; no deep-learning framework.

The inference chain, one module per step: ``preprocess`` (image -> (1, 3, H, W)) -> ``onnx_forward``
(probabilities, activations, switches, conv weights) -> ``backward/`` (the NumPy backward stage: projections to
pixel space and the class-score head) -> ``display`` (tiles, grids, receptive-field windows; the normalisation
itself is ``base.display``).

Above it: ``analyses/`` (the paper's atlas, occlusion and invariance, the checks that go beyond it, and the
headless ``visualize`` and ``predict``, each with its ``cli.py``) and ``app/`` (what only the Gradio app needs).
Every ``python -m demo.<name>`` is a thin entry module that calls ``demo.analyses.<name>.cli.main``. Nothing in
``demo/`` imports torch.
"""
