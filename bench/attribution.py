"""Speed of the evidence methods against Captum's on the same weights, side by side in one run, and of the
faithfulness scores.

    python bench/attribution.py                       # models/vgg16_cat12.onnx, examples/chelsea.png, 2 threads
    python bench/attribution.py --methods gradcam,ig --repeats 3
    python bench/attribution.py --sizes 112,224      # the methods at both sides (the README's table)

Ours: ``demo.analyses.evidence.methods.attribute`` (onnxruntime forward, NumPy backward). Theirs: Captum 0.9 on a
PyTorch VGG16 built from the same .onnx file (folded conv weights and biases, the head's Linear layers; the logits
are checked against onnxruntime's first), on the CPU, both with ``--threads`` threads (onnxruntime, BLAS and
torch). Equal work: SmoothGrad with the same number of noisy copies (``--samples``), Integrated Gradients with the
same number of steps (``--ig-steps``), both in batches of ``--batch-size``. Captum's pairs: gradcam LayerGradCam
(ReLU'd, upsampled), guided-gradcam GuidedGradCam, gradient Saliency, gradient-x-input InputXGradient,
smoothgrad NoiseTunnel(Saliency), ig IntegratedGradients, deconvnet Deconvolution, guided GuidedBackprop, occlusion
Occlusion (the same square side, H/4, and stride, H/8; Captum slides it inside the image, ours centres it on each
grid cell: 8 x 8 squares and the image for ours, 7 x 7 for Captum, so ours does 1.3x the forward passes).

Printed per method: the best time per image, ours and Captum's, run in alternation at least ``--repeats`` times
each and until each side has run ``--min-seconds`` in all (so that a 0.1 s method gets about 20 runs), the ratio
(ours / Captum; below 1: ours is faster) and the runs made. Then one image's gradient through the fused graph
(``demo.backward.fused``) against the forward run and the NumPy stage, side by side; deletion, insertion and ROAD
for one image and one map (Grad-CAM), ``--steps`` steps. The load average is printed before and after: on a shared
CPU the ratios, measured side by side, mean more than the times.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ("gradcam", "guided-gradcam", "gradient", "gradient-x-input", "smoothgrad", "ig", "deconvnet", "guided",
         "occlusion")


@dataclass
class BenchConfig:
    """What to measure; every field is a command-line option of the same name."""

    model: str | None = None  # .onnx file; default models/vgg16_cat12.onnx
    image: str = str(ROOT / "examples" / "chelsea.png")
    methods: str = ",".join(PAIRS)
    threads: int = 2
    repeats: int = 2  # at least this many runs of each side, alternating
    min_seconds: float = 2.0  # ... and until each side has run this long in all (fast methods get more runs)
    samples: int = 25  # SmoothGrad's copies, both sides
    ig_steps: int = 32  # IG's steps, both sides
    batch_size: int = 16
    steps: int = 32  # deletion/insertion steps
    sizes: str = ""  # comma-separated picture sides; empty: the model's own input size


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    p = argparse.ArgumentParser(prog="python bench/attribution.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(BenchConfig):
        kind = str if f.default is None else type(f.default)
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    args = p.parse_args(argv)
    return BenchConfig(**{f.name: getattr(args, f.name) for f in fields(BenchConfig)})


def torch_twin(path: Path):
    """A PyTorch VGG16 (nn.ReLU modules, for Captum's hooks) with the .onnx file's folded weights, and its conv5_3
    ReLU (Grad-CAM's layer)."""
    import onnx
    import torch
    from torch import nn

    from base.spec import CONV_LAYERS, pool_below
    from demo.onnx_forward import _resolve, conv_weights, head_weights

    proto = onnx.load(str(path))
    weights = conv_weights(proto)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    head = head_weights(proto)
    layers: list[nn.Module] = []
    for name, node in zip(CONV_LAYERS, convs, strict=True):
        if CONV_LAYERS.index(name) and pool_below(name) is not None:
            layers.append(nn.MaxPool2d(2, 2))
        w = torch.from_numpy(weights[name].copy())
        conv = nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(torch.from_numpy(_resolve(proto.graph, node.input[2]).astype("float32")))
        layers += [conv, nn.ReLU()]
    if head.kind != "gmp":
        raise SystemExit("this bench builds the gmp head only (the cat-12 models')")
    (w, b), = head.linears
    linear = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w))
        linear.bias.copy_(torch.from_numpy(b))

    class Twin(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.linear = linear

        def forward(self, x):
            return self.linear(torch.amax(self.features(x), dim=(2, 3)))

    twin = Twin().eval()
    return twin, twin.features[-1]


def side_by_side(ours, theirs, repeats: int, min_seconds: float) -> tuple[float, float, int]:
    """Best time of ``ours`` and of ``theirs``, run in alternation (a drift of the machine's speed hits both alike)
    at least ``repeats`` times each and until each side has run ``min_seconds`` in all; and the runs made."""
    mine, yours, runs = [], [], 0
    while runs < repeats or min(sum(mine), sum(yours)) < min_seconds:
        for fn, times in ((ours, mine), (theirs, yours)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        runs += 1
    return min(mine), min(yours), runs


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def compare(config: BenchConfig, model, network, twin, layer, size: int) -> None:
    """Print ours vs Captum per method at ``size`` px, then the faithfulness scores' time."""
    import numpy as np
    import torch
    from captum import attr

    from demo.analyses.evidence.faithfulness import faithfulness
    from demo.analyses.evidence.methods import attribute, forget_occlusion, logits
    from demo.preprocess import preprocess

    x = preprocess(config.image, size, model.mean, model.std)
    cls = int(network.probs(x)[0].argmax())
    tx = torch.from_numpy(x)
    with torch.no_grad():
        gap = float(np.abs(twin(tx).numpy() - logits(network, x)).max())
    print(f"{model.path.name}, {size} px, class {model.class_names[cls]}, {config.threads} threads; "
          f"PyTorch twin's logits within {gap:.2e} of onnxruntime's")
    sd = 0.15 * float(x.max() - x.min())
    b = config.batch_size
    theirs = {
        "gradcam": lambda: torch.nn.functional.interpolate(
            attr.LayerGradCam(twin, layer).attribute(tx, target=cls, relu_attributions=True), size=x.shape[2:],
            mode="bilinear", align_corners=False),
        "guided-gradcam": lambda: attr.GuidedGradCam(twin, layer).attribute(tx, target=cls),
        "gradient": lambda: attr.Saliency(twin).attribute(tx, target=cls, abs=False),
        "gradient-x-input": lambda: attr.InputXGradient(twin).attribute(tx, target=cls),
        "smoothgrad": lambda: attr.NoiseTunnel(attr.Saliency(twin)).attribute(
            tx, nt_type="smoothgrad", nt_samples=config.samples, nt_samples_batch_size=b, stdevs=sd, target=cls,
            abs=False),
        "ig": lambda: attr.IntegratedGradients(twin).attribute(
            tx, baselines=torch.from_numpy(np.ascontiguousarray(
                np.broadcast_to((-model.mean / model.std).reshape(1, 3, 1, 1), x.shape), np.float32)),
            target=cls, n_steps=config.ig_steps, method="riemann_trapezoid", internal_batch_size=b),
        "deconvnet": lambda: attr.Deconvolution(twin).attribute(tx, target=cls),
        "guided": lambda: attr.GuidedBackprop(twin).attribute(tx, target=cls),
        "occlusion": lambda: attr.Occlusion(twin).attribute(  # the same square and stride, grey (0) after normalising
            tx, sliding_window_shapes=(3, size // 4, size // 4), strides=(3, size // 8, size // 8), baselines=0,
            target=cls, perturbations_per_eval=b),
    }
    options = dict(samples=config.samples, steps=config.ig_steps, batch_size=b)
    print(f"\n{size} px\n{'method':18s} {'ours s':>8s} {'Captum s':>9s} {'ours/Captum':>12s} {'runs':>6s}")
    for method in [m.strip() for m in config.methods.split(",") if m.strip()]:
        attribute(method, network, x, cls, **options)  # warm-up: weight layouts, onnxruntime's first run
        theirs[method]()
        def ours(m: str = method) -> None:
            forget_occlusion()  # occlusion keeps the last image's pass: time the pass itself each time
            attribute(m, network, x, cls, **options)

        ours_s, theirs_s, runs = side_by_side(ours, theirs[method], config.repeats, config.min_seconds)
        print(f"{method:18s} {ours_s:8.3f} {theirs_s:9.3f} {ours_s / theirs_s:12.2f} {runs:6d}", flush=True)
    if network.fused is not None:  # the same gradient through the NumPy stage, side by side
        numpy_stage = replace(network, fused=None)
        fused_s, numpy_s, runs = side_by_side(lambda: attribute("gradient", network, x, cls),
                                              lambda: attribute("gradient", numpy_stage, x, cls), config.repeats,
                                              config.min_seconds)
        print(f"\ngradient, one image, {size} px: fused graph {fused_s:.3f} s, forward + NumPy stage {numpy_s:.3f} s: "
              f"{fused_s / numpy_s:.2f}x ({runs} runs each)")
    saliency = attribute("gradcam", network, x, cls)[0]
    for road in (False, True):
        seconds = best(lambda r=road: faithfulness(network, x, saliency, cls, config.steps, road=r), config.repeats)
        what = "deletion + insertion + ROAD" if road else "deletion + insertion"
        print(f"\n{what}, one image, Grad-CAM map, {config.steps} steps, {size} px: {seconds:.2f} s")


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(config.threads)
    sys.path.insert(0, str(ROOT))
    import torch

    from demo.analyses.evidence.methods import Network
    from demo.onnx_forward import OnnxModel

    torch.set_num_threads(config.threads)
    warnings.filterwarnings("ignore", category=UserWarning)  # Captum's notes on requires_grad and hooks
    print(f"load average before: {os.getloadavg()}")
    model = OnnxModel(config.model, device="cpu", threads=config.threads)
    network = Network.from_model(model)
    sizes = [int(v) for v in config.sizes.split(",") if v.strip()] or [model.input_size]
    twin, layer = torch_twin(model.path)
    for size in sizes:
        compare(config, model, network, twin, layer, size)
    print(f"\nload average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
