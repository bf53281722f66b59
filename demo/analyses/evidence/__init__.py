"""Class evidence: which pixels speak for a class, by several methods, and how faithful each map is.

``methods`` computes the maps (Grad-CAM, guided Grad-CAM, gradient, gradient x input, SmoothGrad, Integrated
Gradients, the deconvnet and guided projections, occlusion, and the random and edge baselines) from the
onnxruntime forward pass and the NumPy backward stage, one registry function ``attribute`` for all of them.
``faithfulness`` scores a map by deletion and insertion (Petsiuk et al. 2018) and ROAD (Rong et al. 2022).
``cli`` is the command line of ``python -m demo.faithfulness``, ``config`` its settings
(``FaithfulnessConfig``).
"""

from demo.analyses.evidence.methods import METHODS, Network, attribute

__all__ = ["METHODS", "Network", "attribute"]
