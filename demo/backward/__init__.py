"""The NumPy backward stage: onnxruntime's activations and switches -> pixel space (Zeiler & Fergus 2014,
arXiv 1311.2901), with the three backward rules (deconvnet, guided backpropagation, gradient) and the class head.

The public surface is what this module exports; the rest are private parts:

- ``deconvnet``: ``Deconvnet`` (layer, channel, top-k and class projections), ``project_down``, ``strongest``,
  ``top_channels``, ``Projection``, ``MODES``;
- ``head``: the class-score head (``Head``, ``head_forward``, ``head_backward``; ``adaptive_pool_matrix`` and
  ``max_pool_2x2`` in NumPy);
- ``kernels``: one step down (``prepare_weight``/``DeconvWeight``, ``deconv``, ``unpool``, ``relu_backward``);
- ``descent`` (the rows' way down through the network's description in ``base.spec``), ``winograd``
  (F(4x4, 3x3), F(2x2, 3x3)), ``direct`` (im2col, col2im) and ``threads`` (our threads, BLAS on one);
- ``onnx_graph``: the same descent as ONNX graphs that onnxruntime runs on the forward model's own provider
  (``OnnxDeconvnet``, the CUDA path; import it from ``demo.backward.onnx_graph``).
- ``fused``: a class logit's backward pass appended to the model's own graph, so that a class projection is one
  onnxruntime run (``FusedClassProjection``, the evidence methods' path; import it from ``demo.backward.fused``).
"""

from demo.backward.deconvnet import MODES, Deconvnet, Projection, project_down, strongest, top_channels
from demo.backward.head import Head, HeadPass, adaptive_pool_matrix, head_backward, head_forward, max_pool_2x2
from demo.backward.kernels import DeconvWeight, deconv, prepare_weight, relu_backward, unpool

__all__ = [
    "MODES", "DeconvWeight", "Deconvnet", "Head", "HeadPass", "Projection", "adaptive_pool_matrix", "deconv",
    "head_backward", "head_forward", "max_pool_2x2", "prepare_weight", "project_down", "relu_backward", "strongest",
    "top_channels", "unpool",
]  # fmt: skip
