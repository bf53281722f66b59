"""The GPU path measured: forward and backward split, GPU-vs-CPU differences, the sanity checks' cost.

    python bench/gpu_split.py --device cuda                  # on a GPU host (bench/gpu_check.sh runs it)
    python bench/gpu_split.py --device cpu --sizes 112       # the same code on the CPU provider

For each size (``--sizes``), on ``--device`` (onnxruntime's provider, CUDA with ``use_tf32=0`` unless ``--tf32``),
one image (``--image``), median of ``--repeats`` runs after one untimed run, in milliseconds:

- forward: every activation and switch copied to the host; and the probabilities only;
- backward, one descent from conv5_3 (mode "layer", deconvnet rule) and the 13-layer view (13 descents, one per
  conv layer): the NumPy stage (``demo.backward.deconvnet``, on the CPU whatever the device) and the ONNX descent graphs
  (``demo.backward.onnx_graph``, on the device's provider);
- a class logit's gradient (the evidence methods' class projection): forward + head + NumPy stage, and the fused
  graph (``demo.backward.fused``, one run on the device's provider);
- the 13-layer view served: forward + 13 ONNX descents + display normalisation and PNG encoding (zlib level 1, as
  the app), the server-side cost of the app's "all layers" view;
- against the CPU provider (the same model and image in a second session on the CPU): the activations' relative
  L2 difference (largest over the 13 layers), the share of switches flipped (a switch differs and so does the
  CPU's activation value at the two positions: ties do not count), and one conv5_3 projection per rule, the
  device's ONNX descent against NumPy on the CPU's forward pass (max |difference| / max |CPU's|);
- the sanity checks: the cost of one cascade step's randomized model (the serialised graph with the new
  initializers, session creation, first forward pass; averaged over the 14 steps), and the
  full cascade (``sanity_checks``, target conv5_3, three rules, no class check) in seconds.

Timings on a shared machine measure contention too: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class SplitConfig:
    """What to measure; every field is a command-line option of the same name."""

    model: str | None = None  # .onnx file; default models/vgg16_cat12.onnx
    image: str = str(ROOT / "examples" / "chelsea.png")  # the input image
    device: str = "auto"  # onnxruntime device: auto, cuda, cpu
    tf32: bool = False  # on CUDA, allow TF32
    sizes: str = "112,224"  # comma-separated input sides in pixels (multiples of 16)
    repeats: int = 5  # timed runs per measurement (the median is printed)
    threads: int = 0  # CPU threads for onnxruntime and NumPy; 0: every core
    sanity: bool = True  # also time the sanity checks (--no-sanity: skip)


def parse_args(argv: list[str] | None = None) -> SplitConfig:
    p = argparse.ArgumentParser(prog="python bench/gpu_split.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="FILE.onnx", help="exported model (default: models/vgg16_cat12.onnx)")
    p.add_argument("--image", default=SplitConfig.image, help="input image (default: examples/chelsea.png)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="default: %(default)s")
    p.add_argument("--tf32", action="store_true", help="on CUDA, allow TF32 (default: off)")
    p.add_argument("--sizes", default=SplitConfig.sizes, help="input sides, comma-separated (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=SplitConfig.repeats, help="timed runs (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: every core)")
    p.add_argument("--no-sanity", dest="sanity", action="store_false", help="skip the sanity checks' timing")
    args = p.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes: comma-separated integers, got {args.sizes!r}")
    if any(s < 16 or s % 16 for s in sizes) or args.repeats < 1 or args.threads < 0:
        p.error("--sizes must be multiples of 16, --repeats at least 1, --threads at least 0")
    return SplitConfig(**{f.name: getattr(args, f.name) for f in fields(SplitConfig)})


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} CPUs)"


def median_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` runs, after one untimed run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def flipped_share(switches: dict, cpu_switches: dict, cpu_acts: dict) -> float:
    """Share of switches (all pools) that point elsewhere than the CPU's and at a different CPU value there."""
    import numpy as np

    from base.spec import CONV_LAYERS, POOL_LAYERS, block_of

    flips = total = 0
    for pool in POOL_LAYERS:
        below = [c for c in CONV_LAYERS if block_of(c) == block_of(pool)][-1]  # the conv the pool reads
        plane = cpu_acts[below].reshape(*cpu_acts[below].shape[:2], -1)
        a, b = switches[pool], cpu_switches[pool]
        n, c = a.shape[:2]
        va = np.take_along_axis(plane, a.reshape(n, c, -1), axis=2)
        vb = np.take_along_axis(plane, b.reshape(n, c, -1), axis=2)
        flips += int(((a.reshape(n, c, -1) != b.reshape(n, c, -1)) & (va != vb)).sum())
        total += a.size
    return flips / total


def measure(config: SplitConfig, model, cpu, numpy_net, onnx_net, x) -> None:
    """Print the split, the differences and the sanity checks' cost for the input ``x`` (1, 3, S, S)."""
    import numpy as np
    from PIL import Image

    from base.display import reconstruction_image
    from base.spec import CONV_LAYERS, INPUT_NAME, PROBS_NAME, RULES
    from demo.analyses.sanity.measure import cascading_steps, sanity_checks
    from demo.analyses.sanity.randomize import Randomizer, run_session
    from demo.backward.deconvnet import Deconvnet
    from demo.backward.fused import FusedClassProjection

    size = x.shape[-1]
    probs, acts, switches = model.run(x)
    print(f"\n{size} px ({model.device})")
    every = median_ms(lambda: model.run(x), config.repeats)
    print(f"  forward, every activation and switch to the host  {every:8.1f} ms")
    only = median_ms(lambda: model.session.run([PROBS_NAME], {INPUT_NAME: x}), config.repeats)
    print(f"  forward, probabilities only                       {only:8.1f} ms")
    for name, net in (("NumPy (CPU)", numpy_net), (f"ONNX ({model.device})", onnx_net)):
        for layer in CONV_LAYERS:  # sessions and weight layouts built before timing
            net.project(acts, switches, layer, "layer")
        one = median_ms(lambda net=net: net.project(acts, switches, "conv5_3", "layer"), config.repeats)
        view = median_ms(lambda net=net: [net.project(acts, switches, n, "layer") for n in CONV_LAYERS],
                         max(1, config.repeats // 2))
        print(f"  backward {name:<14} one descent from conv5_3 {one:8.1f} ms; 13-layer view {view:8.1f} ms")

    fused = FusedClassProjection.for_model(model)
    if fused is not None:  # a class logit's gradient: forward + head + NumPy descent, against the fused graph
        cls = int(probs[0].argmax())
        for rule in RULES:
            fused.project_class(x, [cls], rule)  # sessions built before timing
        split = median_ms(lambda: numpy_net.project_class(*model.run(x)[1:], cls, "gradient"), config.repeats)
        one_run = median_ms(lambda: fused.project_class(x, [cls], "gradient"), config.repeats)
        print(f"  class gradient: forward + NumPy stage {split:8.1f} ms; fused graph ({model.device}) "
              f"{one_run:8.1f} ms")

    def served() -> None:
        _, a, s = model.run(x)
        for layer in CONV_LAYERS:
            picture, _ = reconstruction_image(onnx_net.project(a, s, layer, "layer").images[0])
            Image.fromarray(picture).save(io.BytesIO(), format="PNG", compress_level=1)

    print(f"  13-layer view served (forward, 13 ONNX descents, PNGs) {median_ms(served, config.repeats):6.1f} ms")

    _, cpu_acts, cpu_switches = cpu.run(x)
    rel = max(float(np.linalg.norm(acts[n] - cpu_acts[n]) / max(np.linalg.norm(cpu_acts[n]), 1e-30))
              for n in CONV_LAYERS)
    print(f"  vs the CPU provider: activations {rel:.1e} relative L2 (worst layer), switches flipped "
          f"{100 * flipped_share(switches, cpu_switches, cpu_acts):.4f}%")
    cpu_net = Deconvnet.from_model(cpu)
    for rule in RULES:
        got = onnx_net.project(acts, switches, "conv5_3", "layer", rule=rule).images
        want = cpu_net.project(cpu_acts, cpu_switches, "conv5_3", "layer", rule=rule).images
        err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
        print(f"    conv5_3 projection, {rule:<9}: {err:.1e} (device forward + ONNX descent vs CPU + NumPy)")
    if fused is not None:
        for rule in RULES:
            got = fused.project_class(x, [cls], rule)[0]
            want = cpu_net.project_class(cpu_acts, cpu_switches, cls, rule)[0]
            err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
            print(f"    class projection, {rule:<9}: {err:.1e} (device fused graph vs CPU + NumPy)")

    if config.sanity:
        rand = Randomizer(model)
        steps = cascading_steps()[1:]
        make = first = 0.0
        for key in steps:
            t0 = time.perf_counter()
            session = rand.session(key)  # the serialised graph with the drawn initializers, in a new session
            t1 = time.perf_counter()
            run_session(session, x)
            t2 = time.perf_counter()
            make, first = make + t1 - t0, first + t2 - t1
            del session
        n = len(steps)
        print(f"  sanity, per cascade step: serialise + session {1000 * make / n:.0f} ms, first forward "
              f"{1000 * first / n:.0f} ms")
        start = time.perf_counter()
        result = sanity_checks(model, x, "conv5_3", rules=RULES, mode="cascading", classes=False, bar=False)
        t = result.timings
        print(f"  sanity checks, full cascade (conv5_3, 3 rules): {time.perf_counter() - start:.1f} s (forward "
              f"{t['forward']:.1f}, projection {t['projection']:.1f}, similarity {t['similarity']:.1f})")


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from base.cli import set_threads

    threads = set_threads(config.threads or None)  # before NumPy is imported
    import onnxruntime as ort

    from demo.backward.deconvnet import Deconvnet
    from demo.backward.onnx_graph import OnnxDeconvnet
    from demo.onnx_forward import OnnxModel
    from demo.preprocess import load_image, preprocess

    print(f"onnxruntime {ort.__version__}; available providers: {', '.join(ort.get_available_providers())}")
    model = OnnxModel(config.model, device=config.device, threads=threads, allow_tf32=config.tf32)
    cpu = OnnxModel(config.model, device="cpu", threads=threads)
    print(f"onnxruntime provider: {model.provider}; session providers {model.providers}, options "
          f"{ {p: o for p, o in model.session.get_provider_options().items() if p != 'CPUExecutionProvider'} }")
    print(f"{model.path.name}; {threads} CPU thread(s); median of {config.repeats}; {load()}")
    numpy_net, onnx_net = Deconvnet.from_model(model), OnnxDeconvnet(model)
    image = load_image(config.image)
    for size in (int(s) for s in config.sizes.split(",")):
        measure(config, model, cpu, numpy_net, onnx_net, preprocess(image, size, model.mean, model.std))
    print(f"\n{load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
