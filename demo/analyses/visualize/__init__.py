"""The deconvnet reconstructions of one image, layer by layer (Zeiler & Fergus, Fig. 3): the computation behind
``python -m demo.visualize`` (the command line is ``cli.py``)."""

from __future__ import annotations

import numpy as np

from demo.backward import Deconvnet, Projection


def reconstructions(deconvnet: Deconvnet, activations: dict[str, np.ndarray], switches: dict[str, np.ndarray],
                    layer: str, mode: str, channel: int | None = None, k: int = 9,
                    rule: str = "deconvnet") -> dict[str, np.ndarray]:
    """The projections of one image's ``layer`` as {npz key: (3, H, W) float32}, keys "<layer>/<mode>[/<C>]/<rule>"."""
    p: Projection = deconvnet.project(activations, switches, layer, mode, channel, k, rule=rule)
    if mode == "layer":
        return {f"{layer}/layer/{rule}": p.images[0]}
    return {f"{layer}/{mode}/{int(c)}/{rule}": image for c, image in zip(p.channels, p.images, strict=True)}
