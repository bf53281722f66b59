"""The shipped feature visualizations: a compact committed set of pictures (WebP) with an index, and the reader the
app uses.

``python -m demo.featurevis_pack SRC DST --model FILE.onnx`` packs what ``python -m demo.featurevis``
wrote in SRC (``SRC/LAYER/CCCC.png`` + JSON) into DST: ``DST/LAYER/CCCC.webp`` and ``DST/index.json``, which holds
the model file's SHA-256 (a set is shown only for the model it was made from), the settings, and per target the
objective values and whether the picture came back flat. The default set lies in ``models/featurevis/``.

A set grows across runs: when DST already holds a set of the same model file made with the same settings, its
pictures are kept and SRC's are added (a target in both takes SRC's), so a run of further layers, on another
machine or in another session, is packed on top of what ships. A set of another model or other settings is
replaced (its pictures are removed), as is any set with ``--replace``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from base.cli import REPO_ROOT, atomic_write
from demo.analyses.featurevis.config import QUALITY, PackConfig

SHIPPED_DIR = REPO_ROOT / "models" / "featurevis"
INDEX = "index.json"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def pack(src: str | Path, dst: str | Path, model: str | Path, quality: int = QUALITY, replace: bool = False) -> dict:
    """Convert ``src``'s PNGs and JSONs into ``dst``'s WebP pictures and index, added to a set of the same model
    and settings already there (unless ``replace``); returns the index."""
    src, dst = Path(src), Path(dst)
    metas = sorted(src.glob("*/*.json"))
    if not metas:
        raise ValueError(f"{src}: no feature visualizations (LAYER/CCCC.json) there; run python -m demo.featurevis")
    sha = file_sha256(model)
    settings = next((s for s in (json.loads(m.read_text()).get("settings") for m in metas) if s), None)
    earlier = ShippedSet(dst).index if (dst / INDEX).is_file() else None
    units: dict[str, dict[str, dict]] = {}
    if earlier is not None:
        if not replace and earlier.get("model_sha256") == sha and earlier.get("settings") == settings:
            units = earlier["units"]
        else:  # another model's or other settings' pictures: they go
            for layer, stems in earlier.get("units", {}).items():
                for stem in stems:
                    (dst / layer / f"{stem}.webp").unlink(missing_ok=True)
    for meta in metas:
        info = json.loads(meta.read_text())
        png = meta.with_suffix(".png")
        if not png.is_file():
            continue
        layer, stem = meta.parent.name, meta.stem
        out = dst / layer / f"{stem}.webp"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(png).convert("RGB").save(out, format="WEBP", quality=quality, method=6)
        units.setdefault(layer, {})[stem] = {k: info.get(k) for k in (
            "target", "channel", "position", "maximise", "class_name", "objective_first", "objective_last",
            "objective_final", "flat")}
    index = {"model_sha256": sha, "model": Path(model).name, "settings": settings, "units": units,
             "flat": sorted(u["target"] for layer in units.values() for u in layer.values() if u["flat"])}
    atomic_write(dst / INDEX, lambda p: p.write_text(json.dumps(index, indent=0, sort_keys=True) + "\n"), sync=False)
    return index


def unit_stem(layer: str, channel: int) -> str:
    """The file stem of a maximised channel or class: ``0007``, class ``03``."""
    return f"{channel:02d}" if layer == "class" else f"{channel:04d}"


class ShippedSet:
    """A packed set of pictures for one model: ``get(layer, channel)`` -> (P, W, 3) uint8 or None."""

    def __init__(self, root: str | Path = SHIPPED_DIR) -> None:
        self.root = Path(root)
        path = self.root / INDEX
        self.index = json.loads(path.read_text()) if path.is_file() else {"units": {}, "model_sha256": None}

    def matches(self, model_path: str | Path) -> bool:
        """Whether the set was made from this model file (same bytes)."""
        sha = self.index.get("model_sha256")
        return bool(sha) and Path(model_path).is_file() and file_sha256(model_path) == sha

    def info(self, layer: str, channel: int) -> dict | None:
        """The index entry of a channel (or class) of ``layer``, or None."""
        return self.index["units"].get(layer, {}).get(unit_stem(layer, channel))

    def get(self, layer: str, channel: int) -> np.ndarray | None:
        """The picture of channel ``channel`` of ``layer`` (a conv name or "class"), or None when not shipped."""
        if self.info(layer, channel) is None:
            return None
        path = self.root / layer / f"{unit_stem(layer, channel)}.webp"
        return np.asarray(Image.open(path).convert("RGB")) if path.is_file() else None

    def count(self) -> dict[str, int]:
        """Pictures per layer."""
        return {layer: len(units) for layer, units in self.index["units"].items()}


def run(config: PackConfig) -> dict:
    """Pack ``config.src`` into ``config.dst``; print a summary; return the index."""
    from demo.onnx_forward import resolve_model_path

    if not 1 <= config.quality <= 100:
        raise ValueError(f"--quality must lie in 1..100, got {config.quality}")
    index = pack(config.src, config.dst, resolve_model_path(config.model), config.quality, config.replace)
    size = sum(p.stat().st_size for p in Path(config.dst).rglob("*") if p.is_file())
    count = sum(len(u) for u in index["units"].values())
    added = len([m for m in Path(config.src).glob("*/*.json") if m.with_suffix(".png").is_file()])
    layers = ", ".join(f"{layer} {n}" for layer, n in ShippedSet(config.dst).count().items())
    flat = ", ".join(index["flat"]) or "none"
    print(f"packed {added} pictures from {config.src} into {config.dst}/: {count} in all ({layers}; "
          f"{size / 1e6:.1f} MB); flat: {flat}")
    return index
