"""The README's table of evidence methods, from a many-image sanity run and a faithfulness run over the same images.

    python -m demo.sanity docs/heldout_val.txt --root ../shared/data/cat12 --limit 50 --seeds 0,1,2 \\
        --target class --steps 1,4 --methods deconvnet,guided,gradient,gradcam,guided-gradcam,gradient-x-input,\\
smoothgrad,ig,occlusion,random,edges --samples 8 --ig-steps 8 --out out/methods_sanity
    python -m demo.faithfulness docs/heldout_val.txt --root ../shared/data/cat12 --limit 50 --target label \\
        --out out/methods_faithfulness
    python docs/methods_table.py out/methods_sanity out/methods_faithfulness [--merge docs]

Prints one Markdown row per method: Spearman |map| similarity to the trained model's map with the head random
(cascade step 1) and with the head and conv5 random (step 4), the class sensitivity (mean over the other classes),
each mean +- sd over every (image, seed) pair; then the faithfulness scores' mean +- sd over the images. With
``--merge DIR`` the sanity run's summaries replace the rows of the same target, mode, step and method in
``DIR/sanity_summary.csv`` and ``DIR/sanity_classes_summary.csv`` (what the app's Evidence tab reads); the other
rows are kept.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

NAMES = {"gradcam": "Grad-CAM (conv5_3)", "guided-gradcam": "guided Grad-CAM", "gradient-x-input": "gradient x input",
         "smoothgrad": "SmoothGrad", "ig": "Integrated Gradients", "random": "random (baseline)",
         "edges": "edges (baseline)"}


def read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cell(mean: float, sd: float) -> str:
    return f"{mean:.2f} ± {sd:.2f}" if sd > 0.005 else f"{mean:.2f}"


def table(sanity: Path, faith: Path) -> str:
    steps = {(r["method"], r["step"]): r for r in read(sanity / "sanity_summary.csv")
             if r["target"] == "class" and r["mode"] == "cascading" and r["metric"] == "spearman_abs"}
    classes = {r["method"]: r for r in read(sanity / "sanity_classes_summary.csv") if r["metric"] == "spearman_abs"}
    rows = read(faith / "faithfulness.csv")
    images = {r["image"] for r in read(sanity / "sanity_classes_rows.csv")}
    pairs = max((int(r["n"]) for r in steps.values()), default=0)
    lines = [f"Sanity checks: {len(images)} images, {pairs} (image, seed) pairs; faithfulness: "
             f"{len({r['image'] for r in rows})} images.",
             "",
             "| method | head random | head + conv5 random | class sensitivity | deletion AUC (lower better) | "
             "insertion AUC (higher better) | ROAD MoRF / LeRF |", "|---|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]

        def score(key: str, mine=mine) -> tuple[float, float]:
            v = np.array([float(r[key]) for r in mine])
            return float(np.nanmean(v)), float(np.nanstd(v))

        s1, s4, c = steps.get((method, "1")), steps.get((method, "4")), classes.get(method)
        sanity_cells = [cell(float(r["mean"]), float(r["sd"])) if r else "n/a" for r in (s1, s4, c)]
        d, i = score("deletion_auc"), score("insertion_auc")
        lines.append(f"| {NAMES.get(method, method)} | " + " | ".join(sanity_cells) + f" | {d[0]:.3f} ± {d[1]:.3f} | "
                     f"{i[0]:.3f} ± {i[1]:.3f} | {score('road_morf')[0]:.3f} / {score('road_lerf')[0]:.3f} |")
    return "\n".join(lines)


def merge(sanity: Path, docs: Path) -> None:
    """Replace ``docs``' summary rows by the sanity run's where they overlap; keep the others."""
    for name, key in (("sanity_summary.csv", ("target", "mode", "step", "method", "metric")),
                      ("sanity_classes_summary.csv", ("method", "metric"))):
        new = read(sanity / name)
        old = read(docs / name)
        replaced = {tuple(r[k] for k in key) for r in new}
        kept = [r for r in old if tuple(r[k] for k in key) not in replaced]
        with open(docs / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(new[0]))
            writer.writeheader()
            writer.writerows(kept + new)
        print(f"{docs / name}: {len(kept)} rows kept, {len(new)} from {sanity}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python docs/methods_table.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sanity", type=Path, help="the --out folder of the many-image demo.sanity run")
    p.add_argument("faithfulness", type=Path, help="the --out folder of the demo.faithfulness run")
    p.add_argument("--merge", type=Path, metavar="DIR", help="also merge the sanity summaries into DIR's")
    args = p.parse_args(argv)
    print(table(args.sanity, args.faithfulness))
    if args.merge:
        merge(args.sanity, args.merge)
    return 0


if __name__ == "__main__":
    sys.exit(main())
