"""Speed of the sanity checks (demo/analyses/sanity/): the full cascade, split by stage, best of --repeats.

    python bench/sanity.py                                  # models/vgg16_cat12.onnx, examples/chelsea.png
    OPENBLAS_NUM_THREADS=1 python bench/sanity.py --threads 1 --targets conv5_3,class,conv5_3/85

For each target: ``sanity_checks`` in cascading mode with the three rules (deconvnet, guided, gradient) and no
class check: 14 randomization steps (the head, then conv5_3 ... conv1_1) after the trained model, one forward pass
per step that needs one. Printed: the total (target: at most 20 s at the model's input size on an idle 2-core CPU)
and its split, in seconds:

- forward: copying the graph with the randomized initializers, opening an onnxruntime session on it, and its
  forward pass;
- projection: the NumPy deconvnet's projections (three rules per step);
- similarity: Spearman (scipy) and SSIM (skimage) of each map against the trained one;
- weights: drawing the random weights and laying them out for the transposed convolutions.

Then, once, the class-sensitivity check (every class's projection, per rule). The best run of --repeats is
reported (by total). The load average is printed before and after: on a CPU that other processes keep busy,
timings measure contention more than code, and ``OPENBLAS_NUM_THREADS=1`` with ``--threads 1`` is faster.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class BenchConfig:
    """What to measure; every field is a command-line option of the same name."""

    model: str | None = None  # .onnx file; default models/vgg16_cat12.onnx
    image: str = str(ROOT / "examples" / "chelsea.png")  # the input image
    size: int = 0  # input side in pixels; 0: the model's input size
    targets: str = "conv5_3,class"  # comma-separated targets, each measured on its own
    threads: int = 0  # onnxruntime and BLAS threads; 0: every core
    repeats: int = 3  # timed runs per target (the best one is reported)


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    p = argparse.ArgumentParser(prog="python bench/sanity.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="FILE.onnx", help="exported model (default: models/vgg16_cat12.onnx)")
    p.add_argument("--image", default=BenchConfig.image, help="input image (default: examples/chelsea.png)")
    p.add_argument("--size", type=int, default=0, help="input side in pixels, a multiple of 16 (default: the "
                                                       "model's input size)")
    p.add_argument("--targets", default=BenchConfig.targets, help="comma-separated targets (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime and BLAS threads (default: every core)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per target, best reported (default: 3)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.threads < 0 or args.size < 0:
        p.error("--repeats must be at least 1, --threads and --size at least 0")
    return BenchConfig(**{f.name: getattr(args, f.name) for f in fields(BenchConfig)})


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} CPUs)"


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from base.cli import set_threads

    threads = set_threads(config.threads or None)  # before NumPy is imported
    from base.spec import RULES
    from demo.analyses.sanity.measure import class_sensitivity, sanity_checks
    from demo.analyses.sanity.randomize import Randomizer, run_session
    from demo.onnx_forward import OnnxModel
    from demo.preprocess import load_image, preprocess

    model = OnnxModel(config.model, device="cpu", threads=threads)
    size = config.size or model.input_size
    x = preprocess(load_image(config.image), size, model.mean, model.std)
    print(f"{model.path.name}, {size} px, {threads} thread(s), rules {', '.join(RULES)}; {load()}")
    sanity_checks(model, x, "conv5_3", rules=["deconvnet"], classes=False, bar=False)  # warm up, untimed
    for target in config.targets.split(","):
        best = None
        for _ in range(config.repeats):
            start = time.perf_counter()
            result = sanity_checks(model, x, target, mode="cascading", classes=False, bar=False)
            total = time.perf_counter() - start
            if best is None or total < best[0]:
                best = (total, result)
        total, result = best
        t = result.timings
        forwards = 1 + sum(not s.reused for s in result.cascading[1:])
        print(f"\n{target}: full cascade ({len(result.cascading) - 1} steps, {forwards} forward passes, "
              f"{len(result.rules)} rules): {total:.2f} s (best of {config.repeats})")
        for kind in ("forward", "projection", "similarity", "weights"):
            print(f"  {kind:<11} {t[kind]:6.2f} s  {100 * t[kind] / total:5.1f}%")
        rest = total - sum(t[k] for k in ("forward", "projection", "similarity", "weights"))
        print(f"  {'other':<11} {rest:6.2f} s  {100 * rest / total:5.1f}%")
    randomizer = Randomizer(model)
    forward = run_session(randomizer.session(()), x)
    start = time.perf_counter()
    checked = class_sensitivity(randomizer.deconvnet(()), model.head, forward)
    K = len(checked.scores[RULES[0]])
    print(f"\nclass sensitivity ({K} classes x {len(RULES)} rules): {time.perf_counter() - start:.2f} s")
    print(load())
    return 0


if __name__ == "__main__":
    sys.exit(main())
