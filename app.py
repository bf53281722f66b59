"""``python app.py``: serve the deconvnet demo (Gradio) on the embedded model, or on any exported VGG16.

    python app.py                                  # models/vgg16_cat12.onnx on http://127.0.0.1:7860
    python app.py --model my_vgg.onnx --port 8080  # your own export (python -m export ...)
    python app.py --host 0.0.0.0 --share           # reachable from the network, and through a public gradio.live link
    python app.py --atlas atlas/                   # adds an "Atlas" tab (atlas from python -m demo.mine)
    python app.py --compare random.onnx            # a second model beside the first (the paper's Fig. 4, live)
    python app.py --health out/health              # the "Model health" tab for every layer (python -m demo.health)

It prints the URL and the onnxruntime execution provider that runs the network (CUDA when a GPU is usable,
else CPU). On a Hugging Face Space the host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from dataclasses import dataclass, fields

from base.cli import add_model_options, run_cli, set_threads


def _env_port() -> int | None:
    value = os.environ.get("GRADIO_SERVER_PORT", "")
    return int(value) if value.isdigit() else None


@dataclass
class AppConfig:
    """How to serve the app; every field is a command-line option of the same name."""

    model: str | None = None  # .onnx file written by `python -m export`; None: models/vgg16_cat12.onnx
    host: str = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")  # 0.0.0.0 to listen on every interface
    port: int | None = _env_port()  # None: 7860, or the next free port
    share: bool = False  # also open a public *.gradio.live link
    device: str = "auto"  # onnxruntime device: auto (CUDA if a GPU is present), cuda, cpu
    tf32: bool = False  # on CUDA, allow TF32 convolutions (faster, about 3e-4 from the CPU's activations)
    backward: str = "auto"  # the deconvnet: numpy, onnx (onnxruntime, on the network's provider), auto (onnx on CUDA)
    threads: int | None = None  # CPU threads for onnxruntime and NumPy's BLAS; None: every core this process has
    concurrency: int = 1  # requests computed at once (more queue up)
    queue_size: int = 64  # requests allowed to wait; beyond that users are told the app is busy
    cache: int = 4  # uploads whose results are kept, so that changing a view does not recompute
    atlas: str | None = None  # dataset atlas folder (python -m demo.mine --out DIR): adds the "Atlas" tab
    compare: str | None = None  # a second .onnx file shown beside the first (same image, layer and channel)
    health: str | None = None  # a folder of python -m demo.health: the "Model health" tab shows every layer
    fv_steps: int = 128  # Adam steps of a feature visualization made on request (Units tab)
    fv_size: int = 112  # its side in pixels (a multiple of 16)


def parse_args(argv: list[str] | None = None) -> AppConfig:
    """Fill an AppConfig from the command line."""
    defaults = AppConfig()
    p = argparse.ArgumentParser(prog="python app.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=defaults.host, help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=defaults.port, help="port (default: 7860 or the next free one)")
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    add_model_options(p, resize=False, norm=False)
    p.add_argument("--threads", type=int, help="CPU threads for onnxruntime and NumPy (default: all cores)")
    p.add_argument("--backward", choices=("auto", "numpy", "onnx"), default=defaults.backward,
                   help="the deconvnet's backward stage: numpy (the reference), onnx (a graph of the descent in "
                        "onnxruntime, on the network's provider), auto (onnx when the network runs on CUDA, else "
                        "numpy) (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=defaults.concurrency,
                   help="requests computed at the same time; the others wait in the queue (default: %(default)s)")
    p.add_argument("--queue-size", dest="queue_size", type=int, default=defaults.queue_size,
                   help="requests that may wait in the queue (default: %(default)s)")
    p.add_argument("--cache", type=int, default=defaults.cache,
                   help="uploads whose forward pass and projections are kept in memory (default: %(default)s)")
    p.add_argument("--atlas", metavar="ATLAS_DIR",
                   help="a dataset atlas made by python -m demo.mine --out ATLAS_DIR: adds an \"Atlas\" tab (the "
                        "9 strongest image patches of each channel beside their projections)")
    p.add_argument("--compare", metavar="OTHER.onnx",
                   help="a second exported model shown beside the first, for the same image, layer and channel "
                        "(an early checkpoint, or python -m export --random --out random.onnx)")
    p.add_argument("--health", metavar="HEALTH_DIR",
                   help="a folder written by python -m demo.health --out HEALTH_DIR: the \"Model health\" tab shows "
                        "every layer's dead and rare channels, peaks and filter norms (the conv1 filters are always "
                        "shown)")
    p.add_argument("--fv-steps", dest="fv_steps", type=int, default=defaults.fv_steps,
                   help="Adam steps of a feature visualization made on request in the Units tab (default: "
                        "%(default)s; the default model's are shipped)")
    p.add_argument("--fv-size", dest="fv_size", type=int, default=defaults.fv_size,
                   help="its side in pixels, a multiple of 16 (default: %(default)s)")
    args = p.parse_args(argv)
    config = AppConfig(**{f.name: getattr(args, f.name) for f in fields(AppConfig)})
    for name in ("concurrency", "queue_size"):
        if getattr(config, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if config.threads is not None and config.threads < 1:
        p.error("--threads must be at least 1")
    if config.cache < 0:
        p.error("--cache must be 0 or more")
    return config


def serve(config: AppConfig, block: bool = True):
    """Load the model, build the page and serve it; returns (demo, pipeline, local_url) when ``block`` is False."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    threads = set_threads(config.threads)
    from demo.app.pipeline import Pipeline, PipelineConfig

    pipeline = Pipeline.from_path(config.model, device=config.device, threads=threads, allow_tf32=config.tf32,
                                  config=PipelineConfig(cache_size=config.cache, backward=config.backward))
    compare = None
    if config.compare:  # the second model sees the same input size as the first, so pictures line up
        compare = Pipeline.from_path(config.compare, device=config.device, threads=threads, allow_tf32=config.tf32,
                                     config=PipelineConfig(cache_size=config.cache, size=pipeline.size,
                                                           backward=config.backward))
    from demo.app.ui import build_demo, launch  # Gradio is slow to import: only once the model loaded

    try:
        demo = build_demo(pipeline, concurrency=config.concurrency, queue_size=config.queue_size,
                          atlas_dir=config.atlas, compare=compare, health_dir=config.health,
                          featurevis=(config.fv_steps, config.fv_size))
    except BaseException:
        pipeline.close()
        raise
    _, local_url, share_url = launch(demo, config.host, config.port, config.share, prevent_thread_lock=True,
                                     quiet=not block)
    threading.Thread(target=pipeline.warm_up, name="warm-up", daemon=True).start()  # while the page loads
    print(f"Deconvnet demo on {local_url}" + (f" and {share_url}" if share_url else ""))
    print(f"model {pipeline.model.path}; onnxruntime provider: {pipeline.provider} ({threads} CPU threads); "
          f"backward stage: {pipeline.backward}")
    if config.atlas:
        print(f"dataset atlas {config.atlas} in the \"Atlas\" tab")
    if compare is not None:
        print(f"compared with {compare.model.path} (onnxruntime provider: {compare.provider})")
    if not block:
        return demo, pipeline, local_url
    try:
        demo.block_thread()
    finally:
        pipeline.close()
    return demo, pipeline, local_url


def main(argv: list[str] | None = None) -> int:
    return run_cli(serve, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
