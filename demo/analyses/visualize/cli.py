"""``python -m demo.visualize``: project a layer (or a class score) of an image back to pixels, headless.

    python -m demo.visualize cat.jpg --layer conv5_3 --out out/cat
    python -m demo.visualize cat.jpg --layer conv4_1 --mode channel --channel 12 --rule guided --out out/cat
    python -m demo.visualize cat.jpg --layer all --mode topk --k 9 --out out/cat
    python -m demo.visualize cat.jpg --class Bengal --rule gradient --out out/cat     # d logit / d input

``--rule`` chooses how a projection passes each ReLU on its way down (``base.spec.RULES``): ``deconvnet``
(the paper's relu of the signal; the default), ``guided`` (guided backpropagation) or ``gradient`` (the plain
gradient). ``--class`` projects a class score (its logit, before softmax) instead of a layer's activations.

Writes into DIR:
- ``input.png``: the image as the network saw it (resized, cropped),
- per layer: ``<layer>_layer.png``, ``<layer>_channel<C>.png`` (and ``<layer>_channel<C>_crop.png``, cut to
  the strongest unit's receptive field) or ``<layer>_topk.png`` (a captioned grid) plus one
  ``<layer>_topk_<C>.png`` per channel, and the layer's feature maps, ``<layer>_features.png`` (each channel)
  and ``<layer>_merged.png`` (their sum); for a class, ``class_<C>.png``. Names get ``_<rule>`` before ``.png``
  for the guided and gradient rules.
- ``reconstructions.npz``: ``input``, the (1, 3, H, W) float32 tensor that went into the model, and every raw
  float32 reconstruction (3, H, W) in normalised-input units, keyed with the rule: ``conv5_3/layer/deconvnet``,
  ``conv5_3/channel/12/guided``, ``conv5_3/topk/12/deconvnet``, ``class/3/gradient``. One layer in mode layer
  or channel, or one class, gives exactly one array besides ``input``.

Runs the same functions as the app: preprocess -> onnxruntime forward -> NumPy deconvnet -> display.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import numpy as np
from PIL import Image

from base.cli import add_model_options, parse_class, parse_layers, run_cli
from base.display import map_image, reconstruction_image
from base.spec import RULES, field_box
from demo.analyses.visualize import reconstructions
from demo.analyses.visualize.config import VisualizeConfig
from demo.backward import MODES, Deconvnet
from demo.display import feature_grid, merge_channels, projection_tile, tile_images
from demo.onnx_forward import OnnxModel
from demo.preprocess import BACKGROUNDS, deprocess, load_image, preprocess


def parse_args(argv: list[str] | None = None) -> VisualizeConfig:
    """Fill a VisualizeConfig from the command line."""
    p = argparse.ArgumentParser(prog="python -m demo.visualize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", help="image file (any format Pillow reads)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs and reconstructions.npz")
    p.add_argument("--layer", default="conv5_3",
                   help="conv layer (conv1_1 ... conv5_3), a comma-separated list, or 'all' (default: %(default)s)")
    p.add_argument("--mode", choices=MODES, default="layer",
                   help="layer: all feature maps together; channel: the strongest activation of --channel alone; "
                        "topk: each of the --k most active channels alone (default: %(default)s)")
    p.add_argument("--channel", type=int, help="with --mode channel: the channel to project")
    p.add_argument("--k", type=int, default=9, help="with --mode topk: how many channels (default: %(default)s)")
    p.add_argument("--class", dest="class_", metavar="BREED_OR_INDEX",
                   help="project this class's score (its logit) instead of a layer: a class name or index")
    p.add_argument("--rule", choices=RULES, default="deconvnet",
                   help="how a projection passes each ReLU: deconvnet (the paper: relu of the signal), guided "
                        "(guided backpropagation), gradient (the plain gradient) (default: %(default)s)")
    add_model_options(p, resize=True, norm=True)
    p.add_argument("--background", choices=sorted(BACKGROUNDS), default="white",
                   help="background for transparent images (default: %(default)s)")
    p.add_argument("--no-features", dest="features", action="store_false", help="skip the feature-map grids")
    args = p.parse_args(argv)
    config = VisualizeConfig(**{f.name: getattr(args, f.name) for f in fields(VisualizeConfig)})
    try:
        parse_layers(config.layer)
    except ValueError as err:
        p.error(str(err))
    if config.mode == "channel" and config.channel is None and config.class_ is None:
        p.error("--mode channel needs --channel C")
    if config.k < 1:
        p.error("--k must be at least 1")
    return config


def _save(path: Path, picture: np.ndarray) -> None:
    Image.fromarray(picture).save(path)


def _suffix(rule: str) -> str:
    return "" if rule == "deconvnet" else f"_{rule}"


def _save_layer(out: Path, config: VisualizeConfig, layer: str, recons: dict[str, np.ndarray],
                activations: dict[str, np.ndarray]) -> list[str]:
    """Write the PNGs of one layer's reconstructions; returns the keys of the flat (all-zero) ones."""
    flat, pictures, captions, suffix = [], [], [], _suffix(config.rule)
    for key, recon in recons.items():
        picture, is_flat = reconstruction_image(recon, config.norm)
        flat += [key] if is_flat else []
        if config.mode == "layer":
            _save(out / f"{layer}_layer{suffix}.png", picture)
            continue
        c = int(key.split("/")[2])
        value = float(activations[layer][0, c].max())
        name = f"{layer}_channel{c}" if config.mode == "channel" else f"{layer}_topk_{c}"
        _save(out / f"{name}{suffix}.png", picture)
        if config.mode == "channel" and value > 0:  # cut to the strongest unit's receptive field
            row, col = divmod(int(activations[layer][0, c].argmax()), activations[layer].shape[3])
            _save(out / f"{name}_crop{suffix}.png", projection_tile(recon, *field_box(layer, row, col), config.norm))
        pictures.append(picture)
        captions.append(f"ch {c}: {value:.3g}")
    if config.mode == "topk":
        _save(out / f"{layer}_topk{suffix}.png", tile_images(pictures, captions, columns=min(len(pictures), 3)))
    if config.features:
        _save(out / f"{layer}_features.png", feature_grid(activations[layer][0], config.norm)[0])
        _save(out / f"{layer}_merged.png", map_image(merge_channels(activations[layer][0]), config.norm)[0])
    return flat


def run(config: VisualizeConfig) -> dict[str, np.ndarray]:
    """Do the run that ``config`` describes; return what went into reconstructions.npz."""
    layers = parse_layers(config.layer)
    model = OnnxModel(config.model, device=config.device, allow_tf32=config.tf32)
    target = parse_class(config.class_, model.class_names) if config.class_ is not None else None
    deconvnet = Deconvnet.from_model(model)
    x = preprocess(load_image(config.image, config.background), model.input_size, model.mean, model.std,
                   config.resize)
    probs, activations, switches = model.run(x)
    for layer in layers if target is None else []:  # validate the channel before any work
        C = activations[layer].shape[1]
        if config.mode == "channel" and not 0 <= config.channel < C:
            raise ValueError(f"{layer} has channels 0..{C - 1}, got --channel {config.channel}")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"input": x}
    _save(out / "input.png", deprocess(x, model.mean, model.std))
    flat = []
    if target is not None:
        images, logits = deconvnet.project_class(activations, switches, target, config.rule)
        arrays[f"class/{target}/{config.rule}"] = images[0]
        picture, is_flat = reconstruction_image(images[0], config.norm)
        flat += [f"class/{target}/{config.rule}"] if is_flat else []
        _save(out / f"class_{target}{_suffix(config.rule)}.png", picture)
        what = f"the score of class {target} ({model.class_names[target]}, logit {logits[0]:.4g})"
    else:
        for layer in layers:
            recons = reconstructions(deconvnet, activations, switches, layer, config.mode, config.channel, config.k,
                                     config.rule)
            arrays.update(recons)
            flat += _save_layer(out, config, layer, recons, activations)
        what = f"{', '.join(layers)} ({config.mode})"
    np.savez(out / "reconstructions.npz", **arrays)

    top = np.argsort(-probs[0])[:5]
    print(f"model {model.path.name} on {model.device}; onnxruntime provider: {model.provider}; top classes: "
          + ", ".join(f"{model.class_names[i]} {probs[0, i]:.3f}" for i in top))
    if flat:
        print(f"flat (all-zero) reconstructions, shown grey: {', '.join(flat)}")
    print(f"wrote {len(arrays) - 1} reconstruction(s) of {what} with the {config.rule} rule to {out}/")
    return arrays


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))

