"""``python -m bench.app_latency``: how long one request of the app takes, end to end, and where the time goes.

    python -m bench.app_latency                                   # the embedded model, 224 x 224, 20 requests
    python -m bench.app_latency --model /tmp/random.onnx --requests 10

Serves the app in-process on a free localhost port (the same ``build_demo`` and launch settings as ``python
app.py``, the cache off so that every request computes), then sends distinct 224 x 224 images through the real
HTTP API with gradio_client, one at a time, like one user: upload, queue, the streamed ``/analyse`` result (the
prediction and the 13 layer reconstructions) and the download of the 13 PNGs, as a browser does. Reports p50 and
p95 of that end-to-end time, and the server-side split measured by the pipeline itself per request (preprocess,
onnxruntime forward, NumPy deconvnet, encoding = normalisation + PNG/.npz writing); what is left is Gradio's
share (HTTP, queue, file copies, streaming the 14 partial results).
"""

from __future__ import annotations

import argparse
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


def parse_args(argv: list[str] | None = None) -> LatencyConfig:
    """Fill a LatencyConfig from the command line."""
    p = argparse.ArgumentParser(prog="python -m bench.app_latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="FILE.onnx", help="exported model (default: models/vgg16_cat12.onnx)")
    p.add_argument("--size", type=int, default=224, help="input side in pixels (default: %(default)s)")
    p.add_argument("--requests", type=int, default=20, help="timed requests (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed requests first (default: %(default)s)")
    p.add_argument("--threads", type=int, help="CPU threads for onnxruntime and NumPy (default: all cores)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="onnxruntime device (default: %(default)s)")
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


def run(config: LatencyConfig, threads: int) -> dict[str, float]:
    """Serve the app, time ``config.requests`` requests; print the report and return its numbers (ms).

    ``threads``: the CPU threads ``app.set_threads`` sized the pools to (before NumPy was imported).
    """
    import requests
    from gradio_client import Client, handle_file
    from tqdm import tqdm

    from demo.pipeline import Pipeline, PipelineConfig
    from demo.ui import build_demo, launch

    pipeline = Pipeline.from_path(config.model, device=config.device, threads=threads,
                                  config=PipelineConfig(size=config.size, cache_size=0))
    demo = build_demo(pipeline)
    _, url, _ = launch(demo, "127.0.0.1", None, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False, download_files=False)
        session = requests.Session()
        with tempfile.TemporaryDirectory() as tmp:
            images = make_images(Path(tmp), config.warmup + config.requests, config.size)
            ready, total = [], []
            for i, path in enumerate(tqdm(images, desc="requests", leave=False)):
                start = time.perf_counter()
                _, gallery, *_ = client.predict(handle_file(str(path)), "minmax", "crop", api_name="/analyse")
                t_ready = time.perf_counter()
                for item in gallery:  # what the browser then downloads
                    response = session.get(item["image"]["url"], timeout=60)
                    response.raise_for_status()
                end = time.perf_counter()
                if len(gallery) != 13:
                    raise RuntimeError(f"expected 13 layer images, got {len(gallery)}")
                if i >= config.warmup:
                    ready.append(t_ready - start)
                    total.append(end - start)
        stages = [t for kind, t in pipeline.history if kind == "analyse"][config.warmup:]
    finally:
        demo.close()
        pipeline.close()

    ms = 1e3
    split = {name: percentile([getattr(t, name) for t in stages], 50) * ms
             for name in ("preprocess", "forward", "deconvnet", "encoding")}
    server = percentile([t.total for t in stages], 50) * ms
    result = {"p50": percentile(total, 50) * ms, "p95": percentile(total, 95) * ms,
              "ready_p50": percentile(ready, 50) * ms, "server_p50": server, **split}
    print(f"app latency: {config.requests} requests of {config.size} x {config.size} through the HTTP API, one at a "
          f"time; model {pipeline.model.path.name}, onnxruntime {pipeline.provider}, {threads} CPU threads")
    print(f"  end to end (upload -> 13 layer PNGs downloaded): p50 {result['p50']:.0f} ms, p95 {result['p95']:.0f} ms")
    print(f"  result ready (before the PNG downloads):        p50 {result['ready_p50']:.0f} ms, "
          f"p95 {percentile(ready, 95) * ms:.0f} ms")
    print(f"  server-side split (p50 per stage, {server:.0f} ms in all = {100 * server / result['p50']:.0f}% "
          "of end to end):")
    for name, value in split.items():
        print(f"    {name:<11} {value:8.1f} ms  {100 * value / server:5.1f}%")
    print(f"    {'Gradio etc.':<11} {result['p50'] - server:8.1f} ms  (HTTP, queue, file copies, streaming; "
          "the share of end to end outside the pipeline)")
    return result


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    from app import set_threads

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
