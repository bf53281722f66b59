"""``python -m demo.faithfulness``: which evidence map to believe, scored on each image by deletion, insertion and ROAD.

    python -m demo.faithfulness examples/chelsea.png --out out/faithfulness
    python -m demo.faithfulness LABEL_FILE --target label --methods gradcam,ig --limit 50 --out out/faithfulness
    python -m demo.faithfulness docs/heldout_val.txt --root ../shared/data/cat12 --limit 50 --out out/faithfulness

For every image and method the map of the scored class is computed (``demo.analyses.evidence.methods``) and then
perturbed in its order (``demo.analyses.evidence.faithfulness``): deletion sets the most relevant pixels to zero
after normalisation (the mean colour), insertion reveals them on a blurred copy (Gaussian 11 x 11, sigma 5), in
``--steps`` groups, and the areas under the class-probability curves are the scores; ROAD removes the top (MoRF)
or bottom (LeRF) 10 ... 90 % of the map by noisy linear imputation and averages the change of the probability.
Faithful maps have a low deletion AUC, a high insertion AUC, a low (negative) ROAD MoRF and a ROAD LeRF near 0.
``random`` (uniform noise) and ``edges`` (a Sobel edge map) are baselines, always included.

The class scored is the one predicted on the image, or with ``--target label`` the label of a cat-12 label file
(``<path><TAB><label>`` per line, a folder holding train_list.txt, or an ImageFolder tree); ``--root`` resolves a
label file's relative paths against another folder (the committed held-out list names cat-12's files).

Writes into DIR: ``faithfulness.csv`` (one row per image and method: image, class, method, deletion_auc,
insertion_auc, road_morf, road_lerf, seconds; seconds = the time to compute the map), ``summary.md`` (mean +- sd
per method, also printed), ``faithfulness.png`` (the mean deletion and insertion curves per method) and
``curves.npz`` (every curve). Unreadable images are skipped with a ``skipped FILE: reason`` line.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from base.cli import add_model_options, run_cli
from base.spec import CONV_LAYERS, RULES
from demo.analyses.dataset import gather_images, image_name
from demo.analyses.evidence.config import TARGETS, FaithfulnessConfig
from demo.analyses.evidence.faithfulness import faithfulness
from demo.analyses.evidence.methods import BASELINES, METHODS, Network, attribute, check_samples
from demo.analyses.figures import figure_to_array, new_figure
from demo.onnx_forward import OnnxModel
from demo.preprocess import preprocess

CSV_COLUMNS = ("image", "class", "method", "deletion_auc", "insertion_auc", "road_morf", "road_lerf", "seconds")
ALWAYS = ("random", "edges")  # the baselines of every table


def parse_methods(text: str) -> list[str]:
    """"a,b,c" -> method ids (checked), in ``METHODS`` order, the baselines always included."""
    asked = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [m for m in asked if m not in METHODS]
    if unknown or not asked:
        raise ValueError(f"unknown method(s) {unknown or text!r}; expected names from {', '.join(METHODS)}")
    return [m for m in METHODS if m in asked or m in ALWAYS]


def check(config: FaithfulnessConfig) -> list[str]:
    """ValueError naming the first bad option of ``config``; returns the methods to run."""
    methods = parse_methods(config.methods)
    if config.steps < 1 or config.ig_steps < 2 or config.batch_size < 1:
        raise ValueError(f"--steps and --batch-size must be at least 1 and --ig-steps at least 2, got {config.steps}, "
                         f"{config.batch_size} and {config.ig_steps}")
    if config.limit is not None and config.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {config.limit}")
    check_samples(config.samples, config.sd)
    for name, value, allowed in (("target", config.target, TARGETS), ("layer", config.layer, CONV_LAYERS),
                                 ("rule", config.rule, RULES), ("baseline", config.baseline, BASELINES)):
        if value not in allowed:
            raise ValueError(f"unknown --{name} {value!r}; expected one of {', '.join(allowed)}")
    return methods


def parse_args(argv: list[str] | None = None) -> FaithfulnessConfig:
    """Fill a FaithfulnessConfig from the command line."""
    p = argparse.ArgumentParser(prog="python -m demo.faithfulness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IMAGES_OR_LABEL_FILE",
                   help="image files, folders (searched recursively) and/or cat-12 label files")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the CSV, the summary and the plot")
    add_model_options(p, resize=True, norm=False)
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated method ids (random and edges are always added; default: all)")
    p.add_argument("--steps", type=int, default=32, help="deletion/insertion steps (default: %(default)s)")
    p.add_argument("--target", default="predicted",
                   help="which class is scored: predicted, or label (from a label file) (default: %(default)s)")
    p.add_argument("--layer", default="conv5_3", help="Grad-CAM's conv layer (default: %(default)s)")
    p.add_argument("--rule", default="gradient", help=f"SmoothGrad's rule, one of {', '.join(RULES)} "
                                                      "(default: %(default)s)")
    p.add_argument("--samples", type=int, default=25, help="SmoothGrad's noisy copies (default: %(default)s)")
    p.add_argument("--sd", type=float, default=0.15,
                   help="SmoothGrad's noise sd as a fraction of the image's value range, in (0, 1] "
                        "(default: %(default)s)")
    p.add_argument("--ig-steps", type=int, default=32, help="Integrated Gradients' steps (default: %(default)s)")
    p.add_argument("--baseline", default="black", help="Integrated Gradients' baseline: black or blurred "
                                                       "(default: %(default)s)")
    p.add_argument("--no-road", dest="road", action="store_false", help="skip ROAD (faster)")
    p.add_argument("--root", metavar="DIR",
                   help="resolve the relative paths of label files against DIR (default: the label file's folder), "
                        "e.g. --root ../shared/data/cat12 for docs/heldout_val.txt")
    p.add_argument("--limit", type=int, help="at most this many images, taken round-robin over the labels "
                                             "(default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and of tie-breaking (default: 0)")
    p.add_argument("--batch-size", type=int, default=16, help="images per onnxruntime run (default: %(default)s)")
    args = p.parse_args(argv)
    return FaithfulnessConfig(**{f.name: getattr(args, f.name) for f in fields(FaithfulnessConfig)})


def summarise(rows: Sequence[dict]) -> str:
    """A Markdown table: per method, the number of images and mean +- sd of each score and of the seconds."""
    keys = CSV_COLUMNS[3:]
    lines = ["| method | images | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        cells = []
        for k in keys:
            v = np.array([r[k] for r in mine], np.float64)
            cells.append(f"{np.nanmean(v):.3f} +- {np.nanstd(v):.3f}" if np.isfinite(v).any() else "n/a")
        lines.append(f"| {method} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curves_figure(curves: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> np.ndarray:
    """The mean deletion and insertion curves of each method side by side: (h, w, 3) uint8."""
    fig = new_figure(10, 3.8)
    axes = fig.subplots(1, 2)
    for method, pairs in curves.items():
        for ax, k in zip(axes, (0, 1), strict=True):
            mean = np.mean([p[k] for p in pairs], axis=0)
            style = ":" if method in ALWAYS else "-"
            ax.plot(np.linspace(0, 1, mean.size), mean, style, label=method)
    for ax, title in zip(axes, ("deletion (lower = more faithful)", "insertion (higher = more faithful)"),
                         strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("fraction of pixels deleted" if "deletion" in title else "fraction of pixels inserted")
        ax.set_ylabel("p(class)")
        ax.set_ylim(0, 1.02)
    axes[1].legend(fontsize=7, loc="lower right")
    return figure_to_array(fig)


def run(config: FaithfulnessConfig) -> list[dict]:
    """Do the run that ``config`` describes; return the CSV's rows."""
    methods = check(config)
    samples = gather_images(config.inputs, config.root, config.limit or 0)
    root = Path(config.root) if config.root else None
    if config.target == "label" and all(s.label < 0 for s in samples):
        raise ValueError("--target label needs labelled images: give a cat-12 label file, a folder holding "
                         "train_list.txt or an ImageFolder tree")
    model = OnnxModel(config.model, device=config.device, allow_tf32=config.tf32)
    network = Network.from_model(model)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {m: [] for m in methods}
    options = dict(layer=config.layer, rule=config.rule, samples=config.samples, sd=config.sd, steps=config.ig_steps,
                   baseline=config.baseline, seed=config.seed, batch_size=config.batch_size)
    read = 0
    with tqdm(total=len(samples) * len(methods), unit="map", desc="faithfulness", file=sys.stderr) as bar:
        for sample in samples:
            try:
                x = preprocess(sample.path, model.input_size, model.mean, model.std, config.resize)
            except ValueError as err:  # base.images.ImageError: names the file and the reason
                tqdm.write(f"skipped {err}", file=sys.stderr)
                bar.update(len(methods))
                continue
            if config.target == "label" and sample.label < 0:
                tqdm.write(f"skipped {sample.path}: no label (--target label needs a label file)", file=sys.stderr)
                bar.update(len(methods))
                continue
            read += 1
            cls = int(network.probs(x)[0].argmax()) if config.target == "predicted" else int(sample.label)
            for method in methods:
                info: dict = {}
                start = time.perf_counter()
                saliency = attribute(method, network, x, cls, info=info, **options)[0]
                seconds = time.perf_counter() - start
                if "completeness" in info:
                    tqdm.write(f"{sample.path.name}: IG completeness error {float(info['completeness'][0]):.4g} "
                               "(sum of attributions - logit gap)", file=sys.stderr)
                s = faithfulness(network, x, saliency, cls, config.steps, config.seed, config.batch_size,
                                 config.road)
                rows.append({"image": image_name(sample, root), "class": model.class_names[cls], "method": method,
                             "deletion_auc": s.deletion_auc, "insertion_auc": s.insertion_auc,
                             "road_morf": s.road_morf, "road_lerf": s.road_lerf, "seconds": seconds})
                curves[method].append((s.deletion, s.insertion))
                bar.update(1)
    if not read:
        raise ValueError("none of the images could be read")
    with open(out / "faithfulness.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow([r["image"], r["class"], r["method"],
                             *(f"{r[k]:.6f}" for k in CSV_COLUMNS[3:])])
    summary = summarise(rows)
    (out / "summary.md").write_text(f"Faithfulness over {read} image(s), {config.steps} steps, class "
                                    f"{config.target}; mean +- sd.\n\n{summary}\n")
    Image.fromarray(curves_figure(curves)).save(out / "faithfulness.png")
    np.savez(out / "curves.npz", **{f"{m}_{k}": np.stack([p[i] for p in pairs])
                                    for m, pairs in curves.items() for i, k in enumerate(("deletion", "insertion"))})
    print(summary)
    print(f"wrote faithfulness.csv, summary.md, faithfulness.png and curves.npz to {out}/")
    return rows


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))

