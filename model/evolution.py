"""Feature evolution during training: the deconvnet projections of probe images, one PNG per snapshot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from base.cli import atomic_write
from model.vgg import VGG


@torch.no_grad()
def evolution_snapshot(model: VGG, probes: torch.Tensor, path: Path, title: str) -> None:
    """Deconvnet projections of each probe (P, 3, H, W) (rows) for all 13 conv layers (columns), saved as one PNG."""
    from model.deconvnet import Deconvnet

    was_training = model.training
    model.eval()
    try:
        features = model.forward_all(probes)
        deconvnet = Deconvnet(model)
        images = {layer: deconvnet.project(features.activations, features.switches, layer).images.float().cpu().numpy()
                  for layer in features.activations}
    finally:
        model.train(was_training)
    save_layer_grid(images, path, title)


def save_layer_grid(images: dict[str, np.ndarray], path: Path, title: str) -> None:
    """One PNG: a row per probe image, a column per layer (each (P, 3, H, W)); each tile min-max stretched."""
    import matplotlib

    from base.display import reconstruction_image

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(images)
    n = next(iter(images.values())).shape[0]
    fig, axes = plt.subplots(n, len(layers), figsize=(1.4 * len(layers), 1.5 * n + 0.4), dpi=100, squeeze=False)
    for col, layer in enumerate(layers):
        for row in range(n):
            ax = axes[row, col]
            ax.imshow(reconstruction_image(images[layer][row], "minmax")[0])
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(layer, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), sync=False)
    plt.close(fig)
