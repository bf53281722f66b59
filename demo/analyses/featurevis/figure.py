"""The README's figure: conv5_3 feature visualizations beside the same units' projections on an image, and the same
units visualised on cascading-randomized models (conv5_3 random; conv4 and conv5 random; all random).

    python -m demo.featurevis_figure examples/chelsea.png --units conv5_3/7,conv5_3/276 \\
        --pictures out/featurevis --out docs/featurevis_chelsea.png

One row per unit: the feature visualization (from ``--pictures``, a ``python -m demo.featurevis`` folder made with
the trained model; made now when absent), the deconvnet projection of the unit's strongest activation on the image,
then the unit's pictures on the randomized copies (made now, ``--steps`` steps at ``--size`` px, all units of a
copy in one batch). Prints each picture's objective value reached (the pre-ReLU channel mean), trained and random.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

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


def run(config: FigureConfig) -> None:
    """Make the figure ``config`` describes and write it to ``config.out``."""
    trained = load(config.model, config.device, tf32=config.tf32)
    names = trained.model.class_names
    targets: list[Target] = []
    for text in config.units.split(","):
        targets += parse_targets(text, names)
    if any(t.layer == "class" or t.position is not None for t in targets):
        raise ValueError("--units takes channels LAYER/C only")
    if len({t.start for t in targets}) != 1:
        raise ValueError("--units must all lie in one layer")
    settings = Settings(steps=config.steps, size=config.size)
    settings.check()
    rows: list[list[np.ndarray]] = [[] for _ in targets]
    values: list[list[float]] = [[] for _ in targets]
    missing = [i for i, t in enumerate(targets) if config.pictures is None or not
               (Path(config.pictures) / t.layer / f"{t.stem}.png").is_file()]
    made = {i: r for i, r in zip(missing, visualize(trained, [targets[i] for i in missing], settings), strict=True)} \
        if missing else {}
    for i, t in enumerate(targets):
        if i in made:
            picture = to_uint8(made[i].images[0])
        else:
            picture = np.asarray(Image.open(Path(config.pictures) / t.layer / f"{t.stem}.png").convert("RGB"))
            picture = picture[:, : picture.shape[0]]
        rows[i].append(picture)
        values[i].append(float(trained.evaluate([t], picture.transpose(2, 0, 1)[None] / np.float32(255))[0][0]))
    model = trained.model
    x = preprocess(load_image(config.image), model.input_size, model.mean, model.std)
    _, acts, switches = model.run(x)
    net = Deconvnet(model.weights)
    for i, t in enumerate(targets):
        projection = net.project(acts, switches, t.layer, "channel", channel=t.channel).images[0]
        rows[i].append(reconstruction_image(projection)[0])
    for _, layers in CASCADE:
        random = load(config.model, config.device, randomize=layers, tf32=config.tf32)
        for i, r in enumerate(visualize(random, targets, settings)):
            rows[i].append(to_uint8(r.images[0]))
            values[i].append(r.final)
    side = 2 * max(p.shape[0] for row in rows for p in row)  # every tile enlarged to about this side
    tiles, captions = [], []
    heads = ["feature visualization", "projection", *(label for label, _ in CASCADE)]
    for t, row, vals in zip(targets, rows, values, strict=True):
        for j, picture in enumerate(row):
            tiles.append(display.enlarge(picture, side - 32))
            captions.append(f"{t.layer}/{t.channel}" if j == 0 else heads[j])
        print(f"{t.text}: objective reached, trained {vals[0]:.2f}; " +
              "; ".join(f"{label} {v:.2f}" for (label, _), v in zip(CASCADE, vals[1:], strict=True)))
    figure = display.tile_images(tiles, captions, columns=len(heads), font_size=11)
    atomic_write(config.out, lambda p: Image.fromarray(figure).save(p, format="PNG", optimize=True), sync=False)
    print(f"wrote {config.out}")
