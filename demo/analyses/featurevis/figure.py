"""The README's figure: conv5_3 feature visualizations beside the same units' projections on an image, and the same
units visualised on cascading-randomized models (conv5_3 random; conv4 and conv5 random; all random).

    python -m demo.featurevis_figure examples/chelsea.png --units conv5_3/7,conv5_3/276 \\
        --pictures out/featurevis --out docs/featurevis_chelsea.png

One row per unit: the feature visualization (from ``--pictures``, a ``python -m demo.featurevis`` folder made with
the trained model; made now when absent), the deconvnet projection of the unit's strongest activation on the image,
then the unit's pictures on the randomized copies (made now, ``--steps`` steps at ``--size`` px, all units of a
copy in one batch). Prints each picture's objective value reached (the pre-ReLU channel mean), trained and random.

What the pictures owe to training, measured: for every unit of ``--units`` and ``--score`` (more channels of the
same layer, measured, not drawn) and every model, the CSV (``--csv``, default beside ``--out``) holds the objective
the picture reaches on its own model, the trained unit's objective on that picture (how well a picture made on a
randomized model drives the trained unit) and the SSIM of the picture to the trained model's picture of the unit
(``skimage.metrics.structural_similarity``, RGB, data range 255). Every picture of a unit starts from the same
seeded noise and sees the same seeded transformations, so the SSIM compares like with like. A summary over the units
(mean +- sd per model) is printed.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity
from tqdm import tqdm

from base.cli import atomic_write
from base.display import reconstruction_image
from demo import display
from demo.analyses.featurevis.config import FigureConfig
from demo.analyses.featurevis.objective import Target, parse_targets
from demo.analyses.featurevis.optimize import Settings, load, visualize
from demo.backward.deconvnet import Deconvnet
from demo.preprocess import load_image, preprocess

CASCADE = (("conv5_3 random", "head,conv5_3"), ("conv4-5 random", "head,conv5_3,conv5_2,conv5_1,conv4_3,conv4_2,"
                                                                    "conv4_1"),
           ("all random", "head,conv5_3,conv5_2,conv5_1,conv4_3,conv4_2,conv4_1,conv3_3,conv3_2,conv3_1,conv2_2,"
                          "conv2_1,conv1_2,conv1_1"))


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(3, P, P) float RGB in [0, 1] -> (P, P, 3) uint8."""
    return (np.clip(images.transpose(1, 2, 0), 0, 1) * 255 + 0.5).astype(np.uint8)


def _channels(text: str, names: list[str]) -> list[Target]:
    """The channel targets of comma-separated ``text`` (empty: none); ValueError for classes or positions."""
    targets: list[Target] = []
    for part in filter(None, (t.strip() for t in text.split(","))):
        targets += parse_targets(part, names)
    if any(t.layer == "class" or t.position is not None for t in targets):
        raise ValueError("--units and --score take channels LAYER/C only")
    return targets


def _missing(targets: list[Target], pictures: str | None) -> list[int]:
    """The indices of the targets with no picture in the ``pictures`` folder."""
    return [i for i, t in enumerate(targets)
            if pictures is None or not (Path(pictures) / t.layer / f"{t.stem}.png").is_file()]


def _trained_pictures(trained, targets: list[Target], pictures: str | None, missing: list[int], settings: Settings,
                      progress: Callable[[int], object] | None = None) -> list[np.ndarray]:
    """The trained model's picture (P, P, 3) uint8 of each target: read from ``pictures``, made for the targets
    ``missing`` there (``_missing``; ``progress(1)`` after each optimisation step)."""
    made = {i: r for i, r in zip(missing, visualize(trained, [targets[i] for i in missing], settings, progress),
                                 strict=True)} if missing else {}
    out = []
    for i, t in enumerate(targets):
        if i in made:
            out.append(to_uint8(made[i].images[0]))
        else:
            picture = np.asarray(Image.open(Path(pictures) / t.layer / f"{t.stem}.png").convert("RGB"))
            out.append(picture[:, : picture.shape[0]])
    return out


def _objective(vis, target: Target, picture: np.ndarray) -> float:
    """``target``'s objective under ``vis``'s model on ``picture`` (P, P, 3) uint8."""
    return float(vis.evaluate([target], picture.transpose(2, 0, 1)[None] / np.float32(255))[0][0])


def _write_measures(path: Path, rows: list[dict]) -> None:
    """``rows`` as a CSV (unit, model, objective, trained_objective, ssim), floats with 4 decimals."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["unit", "model", "objective", "trained_objective", "ssim"])
        writer.writeheader()
        writer.writerows({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)


def summary(rows: list[dict]) -> list[str]:
    """Per model, mean +- sd over the units of the trained unit's objective on the picture (relative to the trained
    picture's) and of the SSIM to the trained picture: one line each."""
    lines = []
    trained = {r["unit"]: r["trained_objective"] for r in rows if r["model"] == "trained"}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        ratio = np.array([r["trained_objective"] / trained[r["unit"]] for r in mine if trained[r["unit"]] > 0])
        ssim = np.array([r["ssim"] for r in mine])
        lines.append(f"{model}: {len(mine)} units; the trained unit's objective on the picture "
                     f"{ratio.mean():.2f} +- {ratio.std():.2f} of its own picture's; SSIM to the trained picture "
                     f"{ssim.mean():.2f} +- {ssim.std():.2f}")
    return lines


def run(config: FigureConfig) -> list[dict]:
    """Make the figure ``config`` describes, write it to ``config.out`` and the measures to ``config.csv``; return
    the measures (one dict per unit and model)."""
    trained = load(config.model, config.device, tf32=config.tf32)
    names = trained.model.class_names
    targets = _channels(config.units, names)
    shown = len(targets)
    targets += [t for t in _channels(config.score, names) if t.text not in {u.text for u in targets}]
    if not shown:
        raise ValueError("--units names no channel")
    if len({t.start for t in targets}) != 1:
        raise ValueError("--units and --score must all lie in one layer")
    settings = Settings(steps=config.steps, size=config.size)
    settings.check()
    missing = _missing(targets, config.pictures)
    runs = len(CASCADE) + bool(missing)
    bar = tqdm(total=runs * settings.steps, unit="step", desc=f"featurevis figure ({len(targets)} units)")
    pictures = _trained_pictures(trained, targets, config.pictures, missing, settings, bar.update)
    rows: list[list[np.ndarray]] = [[p] for p in pictures[:shown]]
    values: list[list[float]] = [[_objective(trained, t, p)] for t, p in zip(targets, pictures, strict=True)]
    measures = [{"unit": t.text, "model": "trained", "objective": v[0], "trained_objective": v[0], "ssim": 1.0}
                for t, v in zip(targets, values, strict=True)]
    model = trained.model
    x = preprocess(load_image(config.image), model.input_size, model.mean, model.std)
    _, acts, switches = model.run(x)
    net = Deconvnet(model.weights)
    for i, t in enumerate(targets[:shown]):
        projection = net.project(acts, switches, t.layer, "channel", channel=t.channel).images[0]
        rows[i].append(reconstruction_image(projection)[0])
    for label, layers in CASCADE:
        random = load(config.model, config.device, randomize=layers, tf32=config.tf32)
        bar.set_postfix_str(label)
        for i, (t, r) in enumerate(zip(targets, visualize(random, targets, settings, bar.update), strict=True)):
            picture = to_uint8(r.images[0])
            if i < shown:
                rows[i].append(picture)
            values[i].append(r.final)
            measures.append({"unit": t.text, "model": label, "objective": r.final,
                             "trained_objective": _objective(trained, t, picture),
                             "ssim": float(structural_similarity(pictures[i], picture, channel_axis=2,
                                                                 data_range=255))})
    bar.close()
    side = 2 * max(p.shape[0] for row in rows for p in row)  # every tile enlarged to about this side
    tiles, captions = [], []
    heads = ["feature visualization", "projection", *(label for label, _ in CASCADE)]
    for t, row, vals in zip(targets, rows, values, strict=False):
        for j, picture in enumerate(row):
            tiles.append(display.enlarge(picture, side - 32))
            captions.append(f"{t.layer}/{t.channel}" if j == 0 else heads[j])
        print(f"{t.text}: objective reached, trained {vals[0]:.2f}; " +
              "; ".join(f"{label} {v:.2f}" for (label, _), v in zip(CASCADE, vals[1:], strict=True)))
    figure = display.tile_images(tiles, captions, columns=len(heads), font_size=11)
    atomic_write(config.out, lambda p: Image.fromarray(figure).save(p, format="PNG", optimize=True), sync=False)
    table = Path(config.csv) if config.csv else Path(config.out).with_suffix(".csv")
    atomic_write(table, lambda p: _write_measures(p, measures), sync=False)
    print("\n".join(summary(measures)))
    print(f"wrote {config.out} and {table}")
    return measures
