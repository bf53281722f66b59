"""Speed of the NumPy deconvnet stage, measured side by side with torch in one run.

    python bench/deconv.py                      # 224x224, all cores
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/deconv.py --threads 2
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/deconv.py --threads 1,2 --skip-notebook --skip-onnx
    python bench/deconv.py --topk --threads 1   # only mode "topk": rows one at a time vs one batched pass
    python bench/deconv.py --errors --skip-notebook --skip-onnx   # also each layer's float32 error per method

What it measures, on one 224x224 image and a random-weight VGG16 (speed does not depend on the weights):

1. the 13 whole-layer projections (``mode="layer"``, conv1_1 ... conv5_3): our NumPy stage
   (``demo/backward/deconvnet.py``), the same computation in torch on the CPU (``model/deconvnet.py``) with the same
   thread count, and a notebook-style baseline (float64 NumPy unpooling through im2col-style 2x2 windows, one
   framework call per layer with conversions in between); seconds and ratios (the best of --repeats, NumPy and
   torch interleaved so that background load hits them alike). Target: NumPy at most 0.7x torch. With several
   thread counts (``--threads 1,2,4``) every count is measured in this one process, interleaved (the NumPy
   stage's threads and torch's are set at run time, ``base.cli.set_threads``): seconds, the speed-up
   over the first count, and NumPy / torch per count,
2. GFLOP/s of the NumPy stage and of each layer's transposed convolution (with the method the stage picks for
   the whole map: Winograd F(4x4, 3x3) or F(2x2, 3x3), im2col, col2im), against this machine's sgemm GFLOP/s
   (a 2048^3 float32 matmul). GFLOP are those of the direct convolution, so Winograd layers can exceed 100% of
   sgemm (F(4x4, 3x3) does 4x fewer multiplications),
3. the forward pass: onnxruntime against torch eager, same image and threads.

With --errors, each layer's transposed convolution of its own rectified activation, in float32 by F(4x4, 3x3),
F(2x2, 3x3) and im2col, against a float64 direct convolution: the largest error relative to the output's largest
value, and the relative L2 error.

With --topk it measures only mode "topk" (k = 9 at conv2_2, conv3_3, conv4_3, conv5_3): the NumPy stage with
each of the k rows projected alone (``rows_per_pass=1``) against all k rows in one batched pass, and torch's
batched reference; seconds, ratios and the largest per-row relative error against torch.

The machines set OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE; they can hold NumPy's OpenBLAS back against torch
(which ships its own BLAS): OPENBLAS_CORETYPE=Haswell keeps OpenBLAS off AVX-512, halving its GEMMs' speed on
CPUs that have it. For the fair comparison unset both in the command, as above. Timings on a CPU that other
processes keep busy (the load average is printed) measure contention more than code; compare --threads 1 there.
With several thread counts, the other measurements (2., 3., --topk) run with the last count.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class BenchConfig:
    """What to measure; every field is a command-line option of the same name."""

    size: int = 224  # image side in pixels
    threads: tuple[int, ...] = (0,)  # thread counts for NumPy's stage and BLAS, torch, onnxruntime; 0: every core
    repeats: int = 3  # timed runs of each measurement (the best one is reported)
    skip_notebook: bool = False  # skip the (slow) notebook-style baseline
    skip_onnx: bool = False  # skip the onnxruntime-vs-torch forward comparison (needs an export, ~20 s)
    topk: bool = False  # measure only mode "topk": rows one at a time against one batched pass, and torch
    errors: bool = False  # also each layer's float32 error per method against a float64 direct convolution


def thread_counts(text: str) -> tuple[int, ...]:
    """"2" or "1,2,4" -> (2,) or (1, 2, 4); 0 means every core."""
    try:
        counts = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a thread count or a comma list of counts, got {text!r}") from None
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"thread counts must be 0 (every core) or more, got {text!r}")
    cores = len(os.sched_getaffinity(0))
    return tuple(dict.fromkeys(c or cores for c in counts))


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    p = argparse.ArgumentParser(prog="python bench/deconv.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=224, help="image side in pixels, a multiple of 16 (default: 224)")
    p.add_argument("--threads", default="0", type=thread_counts,
                   help="threads for every library, or a comma list of counts measured side by side "
                        "(e.g. 1,2,4; 0: all cores; default: all cores)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement, best reported (default: 3)")
    p.add_argument("--skip-notebook", action="store_true", help="skip the notebook-style baseline")
    p.add_argument("--skip-onnx", action="store_true", help="skip the onnxruntime forward comparison")
    p.add_argument("--topk", action="store_true",
                   help="measure only mode 'topk' (k = 9): each row alone vs one batched pass, and torch")
    p.add_argument("--errors", action="store_true",
                   help="also each layer's float32 error per method against a float64 direct convolution")
    args = p.parse_args(argv)
    return BenchConfig(**{f.name: getattr(args, f.name) for f in fields(BenchConfig)})


CONFIG = parse_args()
sys.path.insert(0, str(ROOT))
from base.cli import set_threads  # noqa: E402  (loads no NumPy)

THREADS = set_threads(CONFIG.threads[-1])  # of all but the side-by-side counts; before NumPy loads OpenBLAS

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from base import spec  # noqa: E402
from base.spec import CONV_LAYERS, pool_below  # noqa: E402
from demo.backward.deconvnet import Deconvnet as NumpyDeconvnet  # noqa: E402
from demo.backward.kernels import _deconv_plane, deconv, prepare_weight  # noqa: E402
from demo.backward.threads import blas_control  # noqa: E402
from model.deconvnet import Deconvnet as TorchDeconvnet  # noqa: E402
from model.vgg import VGG  # noqa: E402


def best_time(fn, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn`` (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def best_times(fns, repeats: int, pause: float = 0.3) -> list[float]:
    """Seconds of the fastest of ``repeats`` calls of each of ``fns``, interleaved (after one warm-up call each) so
    that background load hits them alike, with a ``pause`` before each call: the threads of the call before (torch's
    OpenMP, OpenBLAS's) spin a while once done, and would take a core from the next one."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times, strict=True):
            time.sleep(pause)
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [min(t) for t in times]


def sgemm_gflops(repeats: int) -> float:
    """This machine's float32 matmul speed, GFLOP/s, on a 2048^3 product."""
    n = 2048
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    return 2 * n**3 / best_time(lambda: a @ b, repeats) / 1e9


def layer_flops(acts: dict[str, np.ndarray], weights: dict[str, np.ndarray]) -> dict[str, float]:
    """Multiply-adds x 2 of each layer's transposed convolution on this image."""
    out = {}
    for name in CONV_LAYERS:
        _, _, H, W = acts[name].shape
        C_out, C_in, kh, kw = weights[name].shape
        out[name] = 2.0 * C_out * C_in * kh * kw * H * W
    return out


def notebook_style(acts64: dict[str, np.ndarray], weights: dict[str, torch.Tensor], layer: str) -> np.ndarray:
    """The original notebook's way: float64 NumPy between per-layer framework calls; unpooling through 2x2 window
    columns.

    The max of each 2x2 window is found again from the pre-pool activation laid out as columns (im2col), and
    the signal is placed where it was (the notebook's switches), then folded back (col2im).
    """
    pool_input = {pool_below(c): CONV_LAYERS[i - 1] for i, c in enumerate(CONV_LAYERS) if pool_below(c)}
    x = acts64[layer]
    for name in reversed(CONV_LAYERS[: CONV_LAYERS.index(layer) + 1]):
        x = np.maximum(x, 0.0)
        t = torch.from_numpy(x.astype(np.float32))
        x = F.conv_transpose2d(t, weights[name], padding=1).numpy().astype(np.float64)
        pool = pool_below(name)
        if pool is not None:
            before = acts64[pool_input[pool]]  # (N, C, 2h, 2w)
            N, C, H, W = before.shape
            cols = before.reshape(N, C, H // 2, 2, W // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(N, C, H // 2,
                                                                                                   W // 2, 4)
            mask = np.zeros_like(cols)
            np.put_along_axis(mask, cols.argmax(axis=4)[..., None], 1.0, axis=4)
            cols = mask * x[..., None]
            x = cols.reshape(N, C, H // 2, W // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(N, C, H, W)
    return x


def layer_errors(acts: dict[str, np.ndarray], weights: dict[str, np.ndarray]) -> None:
    """Each layer's float32 transposed convolution of its rectified activation, per method, against float64."""
    print("\nfloat32 error of each layer's transposed convolution against float64 (largest error / largest value, "
          "relative L2 error)")
    methods = ("winograd4", "winograd", "im2col")
    print(f"  {'layer':8} " + " ".join(f"{m:>19}" for m in methods))
    for name in CONV_LAYERS:
        x = np.maximum(acts[name][:1], 0)
        with torch.no_grad():
            ref = F.conv_transpose2d(torch.from_numpy(x).double(), torch.from_numpy(weights[name]).double(),
                                     padding=1).numpy()
        cells = []
        for method in methods:
            err = deconv(x, weights[name], method) - ref
            largest, l2 = np.abs(err).max() / np.abs(ref).max(), np.linalg.norm(err) / np.linalg.norm(ref)
            cells.append(f"{largest:8.1e} {l2:8.1e}")
        print(f"  {name:8} " + "  ".join(f"{c:>18}" for c in cells))


TOPK_LAYERS = ("conv2_2", "conv3_3", "conv4_3", "conv5_3")


def bench_topk(cfg: BenchConfig, f, acts: dict[str, np.ndarray], sws: dict[str, np.ndarray],
               ndeconv: NumpyDeconvnet, tdeconv: TorchDeconvnet, k: int = 9) -> None:
    """Mode "topk": the NumPy stage row by row and in one batched pass, and torch (which batches the k rows)."""
    print(f"\ntopk, k = {k}: NumPy with each row alone (rows_per_pass=1) and with the {k} rows in one pass; torch")
    print(f"  {'layer':8} {'per-row s':>10} {'batched s':>10} {'torch s':>9} {'per-row/batched':>16} "
          f"{'torch/batched':>14} {'max rel. error':>15}")
    for layer in TOPK_LAYERS:
        with torch.no_grad():
            ref = tdeconv.project(f.activations, f.switches, layer, "topk", k=k).images.numpy()
        got = ndeconv.project(acts, sws, layer, "topk", k=k).images
        err = max(float(np.abs(g - r).max() / max(np.abs(r).max(), 1e-30)) for g, r in zip(got, ref, strict=True))
        t_row = best_time(lambda layer=layer: ndeconv.project(acts, sws, layer, "topk", k=k, rows_per_pass=1),
                          cfg.repeats)
        t_batch = best_time(lambda layer=layer: ndeconv.project(acts, sws, layer, "topk", k=k), cfg.repeats)
        with torch.no_grad():
            t_torch = best_time(lambda layer=layer: tdeconv.project(f.activations, f.switches, layer, "topk", k=k),
                                cfg.repeats)
        print(f"  {layer:8} {t_row:10.3f} {t_batch:10.3f} {t_torch:9.3f} {t_row / t_batch:16.2f} "
              f"{t_torch / t_batch:14.2f} {err:15.1e}")


def main() -> None:
    cfg = CONFIG
    torch.set_num_threads(THREADS)
    set_threads(THREADS)
    counts = ",".join(map(str, cfg.threads))
    print(f"threads: {counts} (NumPy stage and OpenBLAS, torch, onnxruntime); image {cfg.size}x{cfg.size}; "
          f"best of {cfg.repeats}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    blas_env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    if blas_env:
        print(f"note: {blas_env} set; for the fair NumPy-vs-torch comparison run with "
              "`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/deconv.py`")
    else:
        print("OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset (fair NumPy-vs-torch comparison)")
    control = blas_control()
    print(f"NumPy stage: our threads, OpenBLAS on one thread meanwhile ({control})" if control else
          "NumPy stage: no control over BLAS's threads found: its kernels run serially, BLAS on its own threads")

    torch.manual_seed(0)
    model = VGG().eval()
    x = torch.randn(1, 3, cfg.size, cfg.size)
    with torch.no_grad():
        f = model.forward_all(x)
    acts = {k: v.numpy() for k, v in f.activations.items()}
    sws = {k: v.numpy() for k, v in f.switches.items()}
    tdeconv = TorchDeconvnet(model)
    weights = {k: v.numpy() for k, v in tdeconv.weights.items()}
    ndeconv = NumpyDeconvnet(weights)
    flops = layer_flops(acts, weights)
    stage_flops = sum(sum(flops[c] for c in CONV_LAYERS[: i + 1]) for i in range(len(CONV_LAYERS)))
    if cfg.topk:
        bench_topk(cfg, f, acts, sws, ndeconv, tdeconv)
        return

    bench_layers(cfg, f, acts, sws, ndeconv, tdeconv, stage_flops)
    bench_per_layer(cfg, f, acts, weights, tdeconv, flops)
    if cfg.errors:
        layer_errors(acts, weights)
    if not cfg.skip_onnx:
        bench_forward(cfg, model, x)


def bench_layers(cfg: BenchConfig, f, acts: dict[str, np.ndarray], sws: dict[str, np.ndarray],
                 ndeconv: NumpyDeconvnet, tdeconv: TorchDeconvnet, stage_flops: float) -> None:
    """1. The 13 whole-layer projections: NumPy and torch interleaved (every thread count), and the notebook-style
    baseline."""

    def at(threads: int, fn):  # fn run with every library on ``threads`` threads
        def run():
            set_threads(threads)
            torch.set_num_threads(threads)
            return fn()
        return run

    numpy_all = lambda: [ndeconv.project(acts, sws, n) for n in CONV_LAYERS]  # noqa: E731
    torch_all = lambda: [tdeconv.project(f.activations, f.switches, n) for n in CONV_LAYERS]  # noqa: E731
    with torch.no_grad():
        # one warm-up of each, then a parity check so the timings compare the same computation
        ref = tdeconv.project(f.activations, f.switches, "conv5_3").images.numpy()
        got = ndeconv.project(acts, sws, "conv5_3").images
        err = float(np.abs(got - ref).max() / np.abs(ref).max())
        times = best_times([at(c, fn) for c in cfg.threads for fn in (numpy_all, torch_all)], cfg.repeats)
        set_threads(THREADS)
        torch.set_num_threads(THREADS)
    t_numpy, t_torch = times[-2:]
    print(f"\n13 whole-layer projections ({stage_flops / 1e9:.0f} GFLOP; NumPy vs torch on conv5_3: relative "
          f"error {err:.1e})")
    if len(cfg.threads) > 1:
        first = cfg.threads[0]
        print(f"  {'threads':>7} {'NumPy s':>8} {'torch s':>8} {f'NumPy x vs {first}':>15} "
              f"{f'torch x vs {first}':>15} {'NumPy / torch':>14}")
        for i, c in enumerate(cfg.threads):
            tn, tt = times[2 * i : 2 * i + 2]
            print(f"  {c:7d} {tn:8.3f} {tt:8.3f} {times[0] / tn:15.2f} {times[1] / tt:15.2f} {tn / tt:14.2f}")
        print(f"  (interleaved in one process, best of {cfg.repeats}; below: {THREADS} threads)")
    print(f"  NumPy stage     {t_numpy:8.3f} s   {stage_flops / t_numpy / 1e9:6.1f} GFLOP/s")
    print(f"  torch (CPU)     {t_torch:8.3f} s   {stage_flops / t_torch / 1e9:6.1f} GFLOP/s")
    if not cfg.skip_notebook:
        acts64 = {k: v.astype(np.float64) for k, v in acts.items()}
        with torch.no_grad():
            t_notebook = best_time(lambda: [notebook_style(acts64, tdeconv.weights, n) for n in CONV_LAYERS],
                                   max(1, cfg.repeats - 1))
        print(f"  notebook-style      {t_notebook:8.3f} s   {stage_flops / t_notebook / 1e9:6.1f} GFLOP/s")
    ratio = t_numpy / t_torch
    print(f"  NumPy / torch = {ratio:.2f} (target <= 0.7: {'met' if ratio <= 0.7 else 'NOT met'})"
          + (f";  notebook-style / NumPy = {t_notebook / t_numpy:.1f}x" if not cfg.skip_notebook else ""))


def bench_per_layer(cfg: BenchConfig, f, acts: dict[str, np.ndarray], weights: dict[str, np.ndarray],
                    tdeconv: TorchDeconvnet, flops: dict[str, float]) -> None:
    """2. Each layer's transposed convolution (the method the stage picks for the whole map) against sgemm."""
    with torch.no_grad():
        gf = sgemm_gflops(cfg.repeats)
    print(f"\nsgemm (2048^3 float32): {gf:.1f} GFLOP/s")
    print(f"  {'layer':8} {'GFLOP':>6} {'method':>9} {'NumPy GFLOP/s':>14} {'% sgemm':>8} {'torch GFLOP/s':>14}")
    heavy = []
    for name in CONV_LAYERS:
        a = acts[name][0].transpose(1, 2, 0)  # (H, W, C), channels last as the stage stores its rows
        wmat = prepare_weight(weights[name])
        method = wmat.method_for(1, *a.shape[:2])
        t_n = best_time(lambda a=a, wmat=wmat: _deconv_plane(a, wmat, relu=True), cfg.repeats)
        ta, tw = f.activations[name], tdeconv.weights[name]
        with torch.no_grad():
            t_t = best_time(lambda ta=ta, tw=tw: F.conv_transpose2d(F.relu(ta), tw, padding=1), cfg.repeats)
        share = flops[name] / t_n / 1e9 / gf
        if flops[name] >= 1.5e9 * (cfg.size / 224) ** 2:
            heavy.append(share)
        print(f"  {name:8} {flops[name] / 1e9:6.2f} {method:>9} {flops[name] / t_n / 1e9:14.1f} "
              f"{100 * share:7.0f}% {flops[name] / t_t / 1e9:14.1f}")
    if heavy:
        print(f"  heavy layers: NumPy reaches {100 * min(heavy):.0f}-{100 * max(heavy):.0f}% of sgemm "
              f"(target >= 50%: {'met' if min(heavy) >= 0.5 else 'NOT met'})")


def bench_forward(cfg: BenchConfig, model: VGG, x: torch.Tensor) -> None:
    """3. The forward pass with every activation and switch: onnxruntime against torch eager."""
    from demo.onnx_forward import OnnxModel
    from export.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vgg16.onnx"
        small = [np.random.default_rng(i).standard_normal(s, dtype=np.float32)
                 for i, s in enumerate([(1, 3, 64, 64), (2, 3, 64, 64), (1, 3, 80, 48)])]
        export_onnx(model, path, check_images=small)
        onnx_model = OnnxModel(path, device="cpu", threads=THREADS)
        xn = x.numpy()
        t_ort = best_time(lambda: onnx_model.run(xn), cfg.repeats)
        with torch.no_grad():
            t_eager = best_time(lambda: model.forward_all(x), cfg.repeats)
        feed = {spec.INPUT_NAME: xn}
        full, pruned = onnx_model.session, onnx_model.session_for([spec.PROBS_NAME])
        t_full = best_time(lambda: full.run([spec.PROBS_NAME], feed), cfg.repeats)
        t_pruned = best_time(lambda: pruned.run(None, feed), cfg.repeats)
        with torch.no_grad():
            t_probs = best_time(lambda: model(x), cfg.repeats)
    print(f"\nforward pass with every activation and switch ({onnx_model.providers[0]})")
    print(f"  onnxruntime     {t_ort:8.3f} s")
    print(f"  torch eager     {t_eager:8.3f} s")
    print(f"  onnxruntime / torch = {t_ort / t_eager:.2f}")
    print("forward pass to the probabilities only")
    print(f"  onnxruntime, the full graph (switches computed, not fetched)  {t_full:8.3f} s")
    print(f"  onnxruntime, the graph pruned to the probabilities            {t_pruned:8.3f} s "
          f"({t_full / t_pruned:.2f}x faster)")
    print(f"  torch eager                                                   {t_probs:8.3f} s "
          f"(pruned / torch = {t_pruned / t_probs:.2f})")

if __name__ == "__main__":
    main()
