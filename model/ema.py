"""An exponential moving average (EMA) of a model's weights, for evaluation and export.

After the n-th optimizer step (n = 1, 2, ...) every floating-point entry of the state dict, parameters and batch
norm's running mean and variance alike, becomes ``ema = d_n * ema + (1 - d_n) * value`` with the warmed-up
decay ``d_n = min(decay, (1 + n) / (10 + n))``: early on the average forgets the random initialisation fast
(d_1 = 2/11), later it averages over about ``1 / (1 - decay)`` steps. Integer buffers (batch norm's
``num_batches_tracked``) are copied. Averaging the running statistics (rather than recomputing them for the
averaged weights) costs nothing extra and keeps a resumed run exact.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def warmed_up_decay(decay: float, updates: int) -> float:
    """The decay used by the ``updates``-th update (1-based): ``min(decay, (1 + n) / (10 + n))``."""
    return min(decay, (1 + updates) / (10 + updates))


class ModelEMA:
    """An averaged copy of ``model`` (always in eval mode, no gradients); ``update(model)`` after each step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` (same architecture) into the average."""
        self.updates += 1
        d = warmed_up_decay(self.decay, self.updates)
        current = model.state_dict()
        for name, average in self.module.state_dict().items():
            value = current[name].detach()
            if average.is_floating_point():
                average.mul_(d).add_(value, alpha=1 - d)
            else:
                average.copy_(value)

    def state_dict(self) -> dict:
        """``{"model": averaged state dict (contiguous copies), "updates": steps averaged, "decay": decay}``."""
        return {"model": {k: v.detach().contiguous().clone() for k, v in self.module.state_dict().items()},
                "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore what :meth:`state_dict` returned."""
        model_state: dict[str, Tensor] = state["model"]  # type: ignore[assignment]
        self.module.load_state_dict(model_state)
        self.updates, self.decay = int(state["updates"]), float(state["decay"])  # type: ignore[arg-type]
