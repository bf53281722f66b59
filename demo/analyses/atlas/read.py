"""Reading an atlas (for the app and the static site): its layers, each channel's entries and pictures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from demo.analyses.atlas import STATE_FILE, grid_path


@dataclass(frozen=True)
class AtlasEntry:
    """One of a channel's top-k: which image, how strong, where (feature-map position and input-pixel box)."""

    rank: int
    image: int  # index into the atlas's image list
    path: str
    label: int  # -1: unknown
    value: float  # the activation
    row: int
    col: int
    box: tuple[int, int, int, int]  # r0, r1, c0, c1 in input pixels, clipped to the image


class Atlas:
    """An atlas directory whose mining is done: its layers, per-channel entries and pictures.

    Pictures of channels that were not rendered (``--render N`` or ``none``) are drawn on request when a model is
    given (``view(layer, channel, model)``), and kept.
    """

    def __init__(self, atlas_dir: str | Path) -> None:
        self.dir = Path(atlas_dir)
        meta = self.dir / "atlas.json"
        if not meta.is_file():
            state = " (mining was interrupted: run python -m demo.mine ... --resume)" if (
                self.dir / STATE_FILE).exists() else ""
            raise FileNotFoundError(f"{self.dir} is not an atlas: no atlas.json{state}")
        self.info: dict = json.loads(meta.read_text())
        with np.load(self.dir / "index.npz") as data:
            self.index = {key: data[key] for key in data.files}
        self.layers: list[str] = list(self.info["layers"])

    def channels(self, layer: str) -> int:
        """Number of channels of ``layer`` in the atlas."""
        return int(self.info["layers"][layer]["channels"])

    def ranked_channels(self, layer: str) -> np.ndarray:
        """Channels of ``layer`` by decreasing top activation (dead channels last): (C,) int64."""
        return np.argsort(-self.index[f"{layer}/values"][:, 0], kind="stable").astype(np.int64)

    def rendered(self, layer: str) -> np.ndarray:
        """(C,) bool: whether the channel's picture has been drawn."""
        return np.array([grid_path(self.dir, layer, c).is_file() for c in range(self.channels(layer))])

    def entries(self, layer: str, channel: int) -> list[AtlasEntry]:
        """The top-k entries of ``channel``, strongest first (entries with no activation left out)."""
        self.check(layer, channel)
        values, images = self.index[f"{layer}/values"][channel], self.index[f"{layer}/images"][channel]
        positions, boxes = self.index[f"{layer}/positions"][channel], self.index[f"{layer}/boxes"][channel]
        paths, labels = self.index["paths"], self.index["labels"]
        return [AtlasEntry(r, int(images[r]), str(paths[images[r]]), int(labels[images[r]]), float(values[r]),
                           int(positions[r, 0]), int(positions[r, 1]), tuple(int(b) for b in boxes[r]))
                for r in range(len(values)) if images[r] >= 0 and values[r] > 0]

    def view(self, layer: str, channel: int, rule: str | None = None) -> np.ndarray:
        """The channel's picture (H, W, 3) uint8: projections left, patches right (``compose``'s layout).

        ``rule``: the backward rule of the projections (None: the atlas's own). FileNotFoundError when the picture
        has not been drawn yet (``demo.analyses.atlas.render.atlas_view`` draws it).
        """
        self.check(layer, channel)
        tag = None if rule in (None, self.rule) else rule
        path = grid_path(self.dir, layer, channel, tag)
        if not path.is_file():
            raise FileNotFoundError(f"{layer} channel {channel} has no picture yet: run python -m demo.mine "
                                    f"--out {self.dir} --resume (renders them all), or pass the model")
        with Image.open(path) as picture:
            return np.asarray(picture.convert("RGB"))

    @property
    def rule(self) -> str:
        """The backward rule the atlas's own pictures are drawn with."""
        return self.info.get("rule", "deconvnet")

    def caption(self, layer: str, channel: int, class_names: Sequence[str] | None = None) -> str:
        """A short Markdown description of the channel's entries (rank, activation, image, class)."""
        names = class_names or self.info.get("class_names") or []
        entries = self.entries(layer, channel)
        lines = [f"**{layer} channel {channel}**: top {len(entries)} of {self.info['images']} images "
                 f"(receptive field {self.info['layers'][layer]['receptive_field']} px)", ""]
        for e in entries:
            label = f", {names[e.label]}" if 0 <= e.label < len(names) else ""
            lines.append(f"{e.rank + 1}. {e.value:.3g} at ({e.row}, {e.col}): {Path(e.path).name}{label}")
        if not entries:
            lines.append("this channel is zero on every image (a dead unit)")
        return "\n".join(lines)

    def check(self, layer: str, channel: int) -> None:
        """ValueError unless ``layer`` is in the atlas and ``channel`` is one of its channels."""
        if layer not in self.info["layers"]:
            raise ValueError(f"the atlas has layers {', '.join(self.layers)}, not {layer!r}")
        if not 0 <= channel < self.channels(layer):
            raise ValueError(f"{layer} has channels 0..{self.channels(layer) - 1}, got {channel}")


@lru_cache(maxsize=4)
def load_atlas(atlas_dir: str) -> Atlas:
    """``Atlas(atlas_dir)``, cached (the app calls this on every selection)."""
    return Atlas(atlas_dir)
