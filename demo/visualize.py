"""``python -m demo.visualize``: project a layer of an image back to pixels, headless (scripts, notebooks).

    python -m demo.visualize cat.jpg --layer conv5_3 --out out/cat
    python -m demo.visualize cat.jpg --layer conv4_1 --mode channel --channel 12 --out out/cat
    python -m demo.visualize cat.jpg --layer all --mode topk --k 9 --out out/cat

Writes into DIR:
- ``input.png``: the image as the network saw it (resized, cropped),
- per layer: ``<layer>_layer.png``, ``<layer>_channel<C>.png`` (and ``<layer>_channel<C>_crop.png``, cropped to
  the receptive field) or ``<layer>_topk.png`` (a captioned grid) plus one ``<layer>_topk_<C>.png`` per channel,
  and the layer's feature maps, ``<layer>_features.png`` (each channel) and ``<layer>_merged.png`` (their sum),
- ``reconstructions.npz``: ``input``, the (1, 3, H, W) float32 tensor that went into the model, and every raw
  float32 reconstruction (3, H, W) in normalised-input units, keyed ``conv5_3/layer``, ``conv5_3/channel/12``,
  ``conv5_3/topk/12``.

Runs the same functions as the app: preprocess -> onnxruntime forward -> NumPy deconvnet -> display.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image

from demo.cli import run_cli
from demo.deconv_numpy import MODES, Deconvnet, Projection
from demo.display import NORMS, feature_grid, map_image, merge_channels, reconstruction_image, support_box, tile_images
from demo.onnx_forward import DEVICES, OnnxModel
from demo.preprocess import BACKGROUNDS, RESIZE_MODES, deprocess, load_image, preprocess
from model.spec import CONV_LAYERS


@dataclass
class VisualizeConfig:
    """One visualisation run; every field is a command-line option of the same name."""

    image: str  # the image file
    out: str  # output folder (created)
    layer: str = "conv5_3"  # a conv layer, a comma-separated list, or "all"
    mode: str = "layer"  # "layer" (all feature maps), "channel" (strongest activation of --channel), "topk"
    channel: int | None = None  # --mode channel: which channel
    k: int = 9  # --mode topk: how many channels
    model: str | None = None  # .onnx file; default models/vgg16_cat12.onnx
    norm: str = "minmax"  # display normalisation: minmax, signed, percentile
    resize: str = "crop"  # crop (short side, centre square) or stretch
    background: str = "white"  # what transparent pixels are composited on
    device: str = "auto"  # auto (CUDA if present), cuda, cpu
    features: bool = True  # also write the feature-map grids


def parse_layers(text: str) -> list[str]:
    """"all", one layer or a comma-separated list -> conv layer names (validated)."""
    layers = list(CONV_LAYERS) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = [name for name in layers if name not in CONV_LAYERS]
    if unknown or not layers:
        raise ValueError(f"unknown layer(s) {unknown or text!r}; expected 'all' or names from {', '.join(CONV_LAYERS)}")
    return layers


def reconstructions(deconvnet: Deconvnet, activations: dict[str, np.ndarray], switches: dict[str, np.ndarray],
                    layer: str, mode: str, channel: int | None = None, k: int = 9) -> dict[str, np.ndarray]:
    """The projections of one image's ``layer`` as {npz key: (3, H, W) float32}, keys "<layer>/<mode>[/<C>]"."""
    p: Projection = deconvnet.project(activations, switches, layer, mode, channel, k)
    if mode == "layer":
        return {f"{layer}/layer": p.images[0]}
    return {f"{layer}/{mode}/{int(c)}": image for c, image in zip(p.channels, p.images, strict=True)}


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
    p.add_argument("--model", metavar="FILE.onnx",
                   help="exported model (default: models/vgg16_cat12.onnx in the repository)")
    p.add_argument("--norm", choices=NORMS, default="minmax",
                   help="how reconstructions become pixels: per-image min-max, signed (zero = grey) or 1-99 "
                        "percentile clipping (default: %(default)s)")
    p.add_argument("--resize", choices=RESIZE_MODES, default="crop",
                   help="crop: short side to the input size, centre square; stretch: whole image squashed "
                        "(default: %(default)s)")
    p.add_argument("--background", choices=sorted(BACKGROUNDS), default="white",
                   help="background for transparent images (default: %(default)s)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="onnxruntime device (default: %(default)s)")
    p.add_argument("--no-features", dest="features", action="store_false", help="skip the feature-map grids")
    args = p.parse_args(argv)
    config = VisualizeConfig(**{f.name: getattr(args, f.name) for f in fields(VisualizeConfig)})
    try:
        parse_layers(config.layer)
    except ValueError as err:
        p.error(str(err))
    if config.mode == "channel" and config.channel is None:
        p.error("--mode channel needs --channel C")
    if config.k < 1:
        p.error("--k must be at least 1")
    return config


def _save(path: Path, picture: np.ndarray) -> None:
    Image.fromarray(picture).save(path)


def run(config: VisualizeConfig) -> dict[str, np.ndarray]:
    """Do the run that ``config`` describes; return what went into reconstructions.npz."""
    layers = parse_layers(config.layer)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    model = OnnxModel(config.model, device=config.device)
    deconvnet = Deconvnet(model.weights)
    x = preprocess(load_image(config.image, config.background), model.input_size, model.mean, model.std,
                   config.resize)
    probs, activations, switches = model.run(x)
    for layer in layers:  # validate the channel before any work
        C = activations[layer].shape[1]
        if config.mode == "channel" and not 0 <= config.channel < C:
            raise ValueError(f"{layer} has channels 0..{C - 1}, got --channel {config.channel}")

    arrays: dict[str, np.ndarray] = {"input": x}
    _save(out / "input.png", deprocess(x, model.mean, model.std))
    flat = []
    for layer in layers:
        recons = reconstructions(deconvnet, activations, switches, layer, config.mode, config.channel, config.k)
        arrays.update(recons)
        pictures, captions = [], []
        for key, recon in recons.items():
            picture, is_flat = reconstruction_image(recon, config.norm)
            flat += [key] if is_flat else []
            if config.mode == "layer":
                _save(out / f"{layer}_layer.png", picture)
                continue
            c = key.rsplit("/", 1)[1]
            value = float(activations[layer][0, int(c)].max())
            name = f"{layer}_channel{c}" if config.mode == "channel" else f"{layer}_topk_{c}"
            _save(out / f"{name}.png", picture)
            box = support_box(recon)
            if config.mode == "channel" and box is not None:
                _save(out / f"{name}_crop.png", picture[box[0] : box[1], box[2] : box[3]])
            pictures.append(picture)
            captions.append(f"ch {c}: {value:.3g}")
        if config.mode == "topk":
            _save(out / f"{layer}_topk.png", tile_images(pictures, captions, columns=min(len(pictures), 3)))
        if config.features:
            _save(out / f"{layer}_features.png", feature_grid(activations[layer][0], config.norm)[0])
            _save(out / f"{layer}_merged.png", map_image(merge_channels(activations[layer][0]), config.norm)[0])
    np.savez(out / "reconstructions.npz", **arrays)

    top = np.argsort(-probs[0])[:5]
    print(f"model {model.path.name} on {model.device}; top classes: "
          + ", ".join(f"{model.class_names[i]} {probs[0, i]:.3f}" for i in top))
    if flat:
        print(f"flat (all-zero) reconstructions, shown grey: {', '.join(flat)}")
    print(f"wrote {len(arrays) - 1} reconstruction(s) of {', '.join(layers)} ({config.mode}) to {out}/")
    return arrays


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
