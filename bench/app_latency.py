"""``python bench/app_latency.py``: how long one request of the app takes, end to end, and where the time goes.

    python bench/app_latency.py                                   # the embedded model, 224 x 224, 20 requests
    python bench/app_latency.py --model /tmp/random.onnx --requests 10 --device cuda

Serves the app in-process on a free localhost port (the same ``build_demo`` and launch settings as ``python
app.py``, the cache off so that every request computes), then sends distinct images through the real HTTP API
with gradio_client, one at a time, like one user: upload, queue, the ``/analyse`` result (the prediction and the
13 layer reconstructions) and the download of the 13 PNGs, as a browser does. Reports, side by side in one run:

- p50 and p95 of that end-to-end time (a client with ``download_files=False`` that fetches the 13 PNGs itself),
- the same with gradio_client's defaults (``Client(url)``, which downloads every result file itself),
- the server-side split measured by the pipeline per request (preprocess, onnxruntime forward, NumPy deconvnet,
  encoding = normalisation + PNG/.npz writing) and Gradio's share (HTTP, queue, file copies),
- the 13 whole-layer projections in torch on the CPU, same activations and threads (when torch is installed):
  the reference the end-to-end time is compared with.
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass
class LatencyConfig:
    """One benchmark run; every field is a command-line option of the same name."""

    model: str | None = None  # .onnx file; None: the embedded default models/vgg16_cat12.onnx
    size: int = 224  # input side in pixels (the network is fully convolutional; 224 is the reference size)
    requests: int = 20  # timed requests
    warmup: int = 2  # untimed requests first (session warm-up, page caches)
    threads: int | None = None  # CPU threads for onnxruntime and BLAS; None: every core
    device: str = "auto"  # onnxruntime device: auto, cuda, cpu
    default_client: int = 5  # requests timed with gradio_client's defaults too (0: skip)


def parse_args(argv: list[str] | None = None) -> LatencyConfig:
    """Fill a LatencyConfig from the command line."""
    p = argparse.ArgumentParser(prog="python bench/app_latency.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="FILE.onnx", help="exported model (default: models/vgg16_cat12.onnx)")
    p.add_argument("--size", type=int, default=224, help="input side in pixels (default: %(default)s)")
    p.add_argument("--requests", type=int, default=20, help="timed requests (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed requests first (default: %(default)s)")
    p.add_argument("--threads", type=int, help="CPU threads for onnxruntime and NumPy (default: all cores)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="onnxruntime device (default: %(default)s)")
    p.add_argument("--default-client", type=int, default=5, metavar="N",
                   help="also time N requests with gradio_client's defaults (downloads every file; default: "
                        "%(default)s, 0 to skip)")
    args = p.parse_args(argv)
    config = LatencyConfig(**{f.name: getattr(args, f.name) for f in fields(LatencyConfig)})
    if config.requests < 1 or config.warmup < 0:
        p.error("--requests must be at least 1 and --warmup at least 0")
    if config.size < 32 or config.size % 16:
        p.error("--size must be a multiple of 16, at least 32")
    return config


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values``, linearly interpolated."""
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def make_images(folder: Path, n: int, size: int) -> list[Path]:
    """n distinct smooth-and-textured RGB PNGs of size x size (distinct bytes: nothing can be served from a cache)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    paths = []
    for i in range(n):
        f = rng.uniform(2, 8, 3)
        rgb = np.stack([np.sin(f[0] * xx + i), np.cos(f[1] * yy), np.sin(f[2] * (xx + yy))], axis=2)
        rgb = 127.5 * (1 + rgb) + rng.normal(0, 12, rgb.shape)
        path = folder / f"bench_{i:03d}.png"
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def torch_reference(pipeline, image: Path, repeats: int = 3) -> float | None:
    """Seconds (best of ``repeats``) of the 13 whole-layer projections in torch (model/deconvnet.py) on the CPU,
    from the same activations and switches; None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    from base.spec import CONV_LAYERS
    from model.deconvnet import project_down

    fwd, _ = pipeline.forward(image)
    weights = {k: torch.from_numpy(v.copy()) for k, v in pipeline.model.weights.items()}
    acts = {k: torch.from_numpy(v) for k, v in fwd.activations.items()}
    switches = {k: torch.from_numpy(v) for k, v in fwd.switches.items()}
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            for layer in CONV_LAYERS:
                project_down(acts[layer], layer, weights, switches)
            best = min(best, time.perf_counter() - start)
    return best


def time_requests(client, images: list[Path], warmup: int, fetch=None) -> tuple[list[float], list[float]]:
    """(ready, total) seconds per timed request: until ``/analyse`` answered, and until ``fetch`` got its files."""
    from gradio_client import handle_file
    from tqdm import tqdm

    ready, total = [], []
    for i, path in enumerate(tqdm(images, desc="requests", leave=False)):
        start = time.perf_counter()
        _, gallery, *_ = client.predict(handle_file(str(path)), "minmax", "crop", "deconvnet", api_name="/analyse")
        t_ready = time.perf_counter()
        if fetch is not None:
            for item in gallery:  # what the browser then downloads
                fetch(item["image"]["url"])
        end = time.perf_counter()
        if len(gallery) != 13:
            raise RuntimeError(f"expected 13 layer images, got {len(gallery)}")
        if i >= warmup:
            ready.append(t_ready - start)
            total.append(end - start)
    return ready, total


def run(config: LatencyConfig, threads: int) -> dict[str, float]:
    """Serve the app, time ``config.requests`` requests; print the report and return its numbers (ms).

    ``threads``: the CPU threads ``base.cli.set_threads`` sized the pools to (before NumPy was imported).
    """
    import httpx
    from gradio_client import Client

    from demo.app.pipeline import Pipeline, PipelineConfig
    from demo.app.ui import build_demo, launch

    pipeline = Pipeline.from_path(config.model, device=config.device, threads=threads,
                                  config=PipelineConfig(size=config.size, cache_size=0))
    demo = build_demo(pipeline)
    _, url, _ = launch(demo, "127.0.0.1", None, prevent_thread_lock=True, quiet=True)
    try:
        with tempfile.TemporaryDirectory() as tmp, httpx.Client() as session:
            images = make_images(Path(tmp), config.warmup + config.requests, config.size)
            ready, total = time_requests(Client(url, verbose=False, download_files=False), images, config.warmup,
                                         lambda url: session.get(url, timeout=60).raise_for_status())
            stages = [t for kind, t in pipeline.history if kind == "analyse"][config.warmup:]
            default = []
            if config.default_client:
                with tempfile.TemporaryDirectory() as downloads:
                    client = Client(url, verbose=False, download_files=downloads)
                    default = time_requests(client, images[: 1 + config.default_client], 1)[0]
            reference = torch_reference(pipeline, images[0])
    finally:
        demo.close()
        pipeline.close()
    return report(config, pipeline, threads, ready, total, stages, default, reference)


def report(config: LatencyConfig, pipeline, threads: int, ready: list[float], total: list[float], stages: list,
           default: list[float], reference: float | None) -> dict[str, float]:
    """Print the measurements and return them in milliseconds."""
    ms = 1e3
    split = {name: percentile([getattr(t, name) for t in stages], 50) * ms
             for name in ("preprocess", "forward", "deconvnet", "encoding")}
    server = percentile([t.total for t in stages], 50) * ms
    result = {"p50": percentile(total, 50) * ms, "p95": percentile(total, 95) * ms,
              "ready_p50": percentile(ready, 50) * ms, "server_p50": server, **split}
    print(f"app latency: {config.requests} requests of {config.size} x {config.size} through the HTTP API, one at a "
          f"time; model {pipeline.model.path.name}, onnxruntime {pipeline.provider}, {threads} CPU threads; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"  end to end (upload -> 13 layer PNGs downloaded): p50 {result['p50']:.0f} ms, p95 {result['p95']:.0f} ms")
    print(f"  result ready (before the PNG downloads):        p50 {result['ready_p50']:.0f} ms, "
          f"p95 {percentile(ready, 95) * ms:.0f} ms")
    if default:
        result["default_client_p50"] = percentile(default, 50) * ms
        print(f"  gradio_client defaults (downloads every file):  p50 {result['default_client_p50']:.0f} ms "
              f"({len(default)} requests)")
    print(f"  server-side split (p50 per stage, {server:.0f} ms in all = {100 * server / result['p50']:.0f}% "
          "of end to end):")
    for name, value in split.items():
        print(f"    {name:<11} {value:8.1f} ms  {100 * value / server:5.1f}%")
    gradio = result["p50"] - server
    print(f"    {'Gradio etc.':<11} {gradio:8.1f} ms  ({100 * gradio / result['p50']:.0f}% of end to end: HTTP, "
          "queue, file copies)")
    if reference is not None:
        result["torch_13_layers"] = reference * ms
        print(f"  torch, the 13 whole-layer projections alone: {reference * ms:.0f} ms; end to end p50 = "
              f"{result['p50'] / (reference * ms):.2f}x that")
    return result


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    from base.cli import set_threads

    threads = set_threads(config.threads)  # before NumPy is imported
    from demo.onnx_forward import DEFAULT_MODEL

    model = Path(config.model) if config.model else DEFAULT_MODEL
    if not model.is_file():
        print(f"error: no model at {model}. Pass --model FILE.onnx (e.g. `python -m export --random --out "
              "/tmp/random.onnx` writes a random-weight one), or export the trained model to "
              f"{DEFAULT_MODEL.relative_to(ROOT)}.", file=sys.stderr)
        return 2
    run(config, threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
