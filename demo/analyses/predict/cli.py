"""``python -m demo.predict``: classify images with an exported model, write a CSV, score against labels.

    python -m demo.predict photos/ --csv predictions.csv
    python -m demo.predict a.jpg b.png --model models/vgg16_imagenet.onnx --csv out.csv
    python -m demo.predict --labels ../shared/data/cat12/train_list.txt --csv train.csv   # images of the file
    python -m demo.predict --labels runs/cat12_v2/val_list.txt --tta --csv val.csv   # with flip TTA, both figures
    python -m demo.predict photos/ --csv predictions.csv --engine ray --ray-workers 4   # the same CSV, on Ray

The CSV has one row per image: ``path,class,breed,probability`` (class index, its name, its probability).
With ``--labels`` (a cat-12 label file, ``<relative path><TAB><label>`` per line) it also prints
``accuracy: 0.xxxx`` and the confusion matrix (rows: true class, columns: predicted) over the images that
have a label; without image arguments it classifies every image the label file lists. ``--tta`` averages each
image's probabilities with its mirror image's (horizontal-flip test-time augmentation): the CSV holds the averaged
ones, and with ``--labels`` both accuracies are printed, without and with it.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np

from base.cli import UsageError, add_model_options, collect_images, run_cli
from base.labels import parse_label_file
from demo.analyses import ray_engine
from demo.analyses.predict import classify, confusion_matrix, format_confusion, plot_confusion
from demo.analyses.predict.config import PredictConfig
from demo.onnx_forward import OnnxModel


def parse_args(argv: list[str] | None = None) -> PredictConfig:
    """Fill a PredictConfig from the command line."""
    p = argparse.ArgumentParser(prog="python -m demo.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="IMAGES_OR_FOLDER",
                   help="image files and/or folders (recursive); default with --labels: the label file's images")
    p.add_argument("--csv", required=True, metavar="OUT.csv", help="where to write path,class,breed,probability")
    p.add_argument("--labels", metavar="LABEL_FILE", help="cat-12 label file: print accuracy and confusion matrix")
    add_model_options(p, resize=True, norm=False)
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: %(default)s)")
    p.add_argument("--confusion-png", metavar="FILE.png", help="with --labels: also plot the confusion matrix")
    p.add_argument("--tta", action="store_true",
                   help="horizontal-flip test-time augmentation: average the probabilities of each image and its "
                        "mirror image; with --labels both accuracies are printed")
    ray_engine.add_engine_options(p)
    args = p.parse_args(argv)
    if not args.inputs and not args.labels:
        p.error("give images or folders, or --labels LABEL_FILE")
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    return PredictConfig(**{f.name: getattr(args, f.name) for f in fields(PredictConfig)})


def run(config: PredictConfig) -> dict:
    """Do the run that ``config`` describes; return {"paths", "probs", "accuracy", "confusion"}."""
    ray_settings = ray_engine.settings_of(config)  # None: the local engine
    model = OnnxModel(config.model, device=config.device, allow_tf32=config.tf32)
    samples = parse_label_file(config.labels) if config.labels else []
    labelled = {s.path.resolve(): s.label for s in samples}
    paths = collect_images(config.inputs) if config.inputs else [s.path for s in samples]
    if not paths:
        raise UsageError(f"no images found in {', '.join(config.inputs)}")
    if ray_settings is not None:
        paths, probs, errors = ray_engine.classify(ray_settings, model, paths, config.batch_size, config.resize,
                                                   config.tta)
    else:
        paths, probs, errors = classify(model, paths, config.batch_size, config.resize, config.tta)
    plain = probs[:, 0] if config.tta else probs
    probs = probs[:, 1] if config.tta else probs  # what the CSV reports
    for message in errors:
        print(f"skipped {message}", file=sys.stderr)
    if errors and not paths:
        raise ValueError(f"none of the {len(errors)} image(s) could be read; nothing classified")
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)

    Path(config.csv).parent.mkdir(parents=True, exist_ok=True)
    with open(config.csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "class", "breed", "probability"])
        for path, p, c in zip(paths, probs, pred, strict=True):
            writer.writerow([str(path), int(c), model.class_names[c], f"{p[c]:.6f}"])
    print(f"wrote {len(paths)} predictions to {config.csv}")

    result = {"paths": paths, "probs": probs, "accuracy": None, "confusion": None}
    if config.tta:
        result["plain_probs"] = plain
    if config.labels:
        K = len(model.class_names)
        keep = [i for i, p in enumerate(paths) if p.resolve() in labelled]
        true = np.array([labelled[paths[i].resolve()] for i in keep], dtype=np.int64)
        if len(keep) < len(paths):
            print(f"{len(paths) - len(keep)} image(s) have no label in {config.labels}; not scored", file=sys.stderr)
        if true.size and true.max() >= K:
            raise ValueError(f"label {true.max()} in {config.labels}, but the model has {K} classes")
        if not keep:
            print("accuracy: n/a (no labelled image)")
            return result
        cm = confusion_matrix(true, pred[keep], K)
        result.update(accuracy=float(np.trace(cm) / cm.sum()), confusion=cm)
        print(f"labelled images: {len(keep)}")
        if config.tta:
            result["plain_accuracy"] = float((plain[keep].argmax(axis=1) == true).mean())
            print(f"accuracy without flip TTA: {result['plain_accuracy']:.4f}")
            print(f"accuracy with flip TTA: {result['accuracy']:.4f} (the CSV, the matrix and the per-class figures)")
        else:
            print(f"accuracy: {result['accuracy']:.4f}")
        print("confusion matrix (rows: true class, columns: predicted class)")
        print(format_confusion(cm, model.class_names))
        print("per-class accuracy (recall):")
        for name, correct, total in zip(model.class_names, np.diag(cm), cm.sum(axis=1), strict=True):
            print(f"  {name:<20} {correct / total if total else float('nan'):.4f}  ({correct}/{total})")
        if config.confusion_png:
            plot_confusion(cm, model.class_names, config.confusion_png)
            print(f"wrote {config.confusion_png}")
    return result


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, parse_args(argv))

