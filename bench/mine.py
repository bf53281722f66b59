"""Throughput of atlas mining (demo/analyses/atlas) against the forward pass alone, measured side by side in one run.

    python bench/mine.py                                    # 32 images of cat-12 (or generated ones), 224 px
    python bench/mine.py --model models/vgg16_cat12.onnx --images 64 --batch-size 16

On the same images, in the same process, with the same onnxruntime settings (best of --repeats, the variants
interleaved so that background load hits them alike):

1. forward alone: ``OnnxModel.predict`` on each batch of preprocessed tensors (the exported graph, probabilities
   fetched): what classifying the data set costs;
2. mining, streaming pass: the same batches through ``ChannelMaxima`` (the graph ending in per-channel
   ArgMax/GatherElements, only (N, C) numbers leave onnxruntime) plus the running top-k merge. Target: at least
   0.8x the throughput of 1;
3. for comparison, the naive way: every activation and switch fetched (``OnnxModel.run``), maxima and the merge
   in NumPy;
4. end to end from the image files: ``demo.analyses.atlas.mine.stream`` (decoding in background threads) against
   ``predict`` one batch after the other;
5. the rendering pass, per entry: one deconvnet projection of a single activation at 224 px, for each mined
   layer, and what a full atlas of the layers would cost at that rate (k * C entries per layer). It does not
   depend on the data set's size, only on the number of channels;
6. the rendering rate: an atlas of the images is mined (``--render none``), then the tiles of the
   ``--render-channels`` strongest channels of each layer are drawn (``render._draw_tiles``: a forward pass per
   distinct image, the entries projected, tiles cut and saved), in entries per second: each layer alone, and
   all layers in one pass as ``render`` draws them (an image's forward pass then serves all of its entries).
   ``--only-render`` measures only this.
7. ``--engine ray --ray-workers 1,2``: instead of 1-6, the engines side by side on the same images: the local
   engine (``stream``, decoding threads, one onnxruntime session on every core) and the Ray engine
   (``demo.analyses.ray_engine``, one local Ray runtime) with each worker count, whole runs from the files in
   images per second; Ray's fixed cost (starting the actor pool: processes, sessions), measured on one batch, and
   its overhead per image beyond it; the per-worker rate that sizes a cluster.

Without --model a random-weight VGG16 is exported to a temporary file (speed does not depend on the weights);
that needs torch, the benchmark only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cat12" / "train_list.txt"


@dataclass
class BenchConfig:
    """What to measure; every field is a command-line option of the same name."""

    model: str | None = None  # .onnx file; default: a random-weight export
    data: str | None = None  # label file or folder; default ../shared/data/cat12 if present, else generated
    images: int = 32  # how many images
    size: int = 224  # input side in pixels
    batch_size: int = 16  # images per forward pass
    layers: str = "conv3_3,conv4_3,conv5_3"  # mined layers
    threads: int = 0  # onnxruntime and BLAS threads; 0: every core
    workers: int = 2  # decoding threads of the end-to-end run
    repeats: int = 2  # timed runs per measurement (the best one is reported)
    projections: int = 3  # entries per layer timed in the rendering measurement
    render_channels: int = 8  # channels per layer whose tiles are drawn in the rendering-rate measurement
    only_render: bool = False  # measure only the rendering rate
    engine: str = "local"  # ray: compare the local engine with the Ray engine (7) instead of 1-6
    ray_workers: str = "1,2"  # Ray worker counts measured with --engine ray


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    p = argparse.ArgumentParser(prog="python bench/mine.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", metavar="FILE.onnx", help="exported model (default: random weights, exported here)")
    p.add_argument("--data", metavar="DIR_OR_LABEL_FILE",
                   help="images (default: ../shared/data/cat12/train_list.txt when present, else generated)")
    p.add_argument("--images", type=int, default=32, help="number of images (default: %(default)s)")
    p.add_argument("--size", type=int, default=224, help="input side, a multiple of 16 (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: %(default)s)")
    p.add_argument("--layers", default="conv3_3,conv4_3,conv5_3", help="mined layers (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="threads for onnxruntime and BLAS (default: all cores)")
    p.add_argument("--workers", type=int, default=2, help="decoding threads, end to end (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per measurement (default: %(default)s)")
    p.add_argument("--projections", type=int, default=3, help="projections timed per layer (default: %(default)s)")
    p.add_argument("--render-channels", type=int, default=8,
                   help="channels per layer drawn in the rendering-rate measurement (default: %(default)s)")
    p.add_argument("--only-render", action="store_true", help="measure only the rendering rate (6)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="ray: the local engine against the Ray engine (7) instead of 1-6 (default: %(default)s)")
    p.add_argument("--ray-workers", default="1,2", metavar="N,N",
                   help="with --engine ray: Ray worker counts to measure (default: %(default)s)")
    args = p.parse_args(argv)
    return BenchConfig(**{f.name: getattr(args, f.name) for f in fields(BenchConfig)})


CONFIG = parse_args()
sys.path.insert(0, str(ROOT))
from base.cli import cpu_threads, set_threads  # noqa: E402  (loads no NumPy)

THREADS = set_threads(CONFIG.threads or cpu_threads())  # BLAS and OpenMP pools, before NumPy loads OpenBLAS

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from base import spec  # noqa: E402
from base.cli import parse_layers  # noqa: E402
from base.labels import Sample  # noqa: E402
from demo.analyses import dataset  # noqa: E402
from demo.analyses.atlas import cli as atlas_cli  # noqa: E402
from demo.analyses.atlas import render as atlas_render  # noqa: E402
from demo.analyses.atlas.mine import TopK, stream  # noqa: E402
from demo.analyses.atlas.read import Atlas  # noqa: E402
from demo.backward import Deconvnet  # noqa: E402
from demo.onnx_forward import OnnxModel  # noqa: E402


def export_random(path: Path, size: int) -> None:
    """A random-weight VGG16 (the global max-pool head) exported to ``path`` (torch, here only)."""
    import torch

    from export.onnx_export import export_onnx
    from model.vgg import VGG

    torch.manual_seed(0)
    small = [np.random.default_rng(i).standard_normal(s, dtype=np.float32)
             for i, s in enumerate([(1, 3, 32, 32), (2, 3, 32, 32), (1, 3, 48, 32)])]
    export_onnx(VGG().eval(), path, input_size=size, check_images=small)


def generated_samples(folder: Path, count: int) -> list[Sample]:
    """``count`` JPEG files of smooth random pictures (cat-12-like sizes), so decoding is part of the work."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        h, w = int(rng.integers(200, 330)), int(rng.integers(200, 330))
        low = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        picture = Image.fromarray(low).resize((w, h), Image.Resampling.BILINEAR)
        path = folder / f"gen{i:03d}.jpg"
        picture.save(path, quality=90)
        samples.append(Sample(path, i % spec.NUM_CLASSES))
    return samples


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def mine_atlas(model_path: Path, data: str | None, samples: list[Sample], out: Path, cfg: BenchConfig) -> Atlas:
    """An atlas of ``samples`` (``--render none``: mined, nothing drawn), for the rendering-rate measurement."""
    if data is None:  # the generated JPEGs: list them in a folder of their own
        data = str(samples[0].path.parent)
    config = atlas_cli.MineConfig(data=data, out=str(out), model=str(model_path), layers=cfg.layers,
                                  batch_size=cfg.batch_size, size=cfg.size, render="none", limit=cfg.images,
                                  workers=cfg.workers)
    return Atlas(atlas_cli.run(config, bar=False))


def render_todo(atlas: Atlas, layers: list[str], channels: int) -> dict[int, list[tuple[str, int, int]]]:
    """The entries of the ``channels`` strongest channels of each of ``layers``, grouped by image (as ``render``)."""
    todo: dict[int, list[tuple[str, int, int]]] = {}
    for layer in layers:
        (atlas.dir / atlas_render.TILES_DIR / layer).mkdir(parents=True, exist_ok=True)
        for c in atlas.ranked_channels(layer)[:channels].tolist():
            for r in range(atlas.index[f"{layer}/images"].shape[1]):
                image = int(atlas.index[f"{layer}/images"][c, r])
                if image >= 0 and atlas.index[f"{layer}/values"][c, r] > 0:
                    todo.setdefault(image, []).append((layer, c, r))
    return todo


def rendering_rate(model: OnnxModel, atlas: Atlas, layers: list[str], cfg: BenchConfig, draw=None) -> float:
    """Entries per second of ``draw`` (default ``render._draw_tiles``) on the strongest channels: each layer alone,
    then all layers in one pass (as ``render`` draws them: one forward pass per image for all its entries)."""
    draw = draw or atlas_render._draw_tiles
    rule = atlas.info.get("rule", "deconvnet")
    rate = 0.0
    for which in [[layer] for layer in layers] + [layers]:
        todo = render_todo(atlas, which, cfg.render_channels)
        entries = sum(len(v) for v in todo.values())
        seconds = best(lambda todo=todo: draw(model, atlas, todo, cfg.batch_size, cfg.workers, False, rule, None),
                       cfg.repeats)
        rate = entries / seconds
        print(f"  {'+'.join(which):24} {entries:4} entries of {len(todo):3} images in {seconds:6.2f} s: "
              f"{rate:6.1f} entries/s")
    return rate


def main() -> None:
    cfg = CONFIG
    sys.stdout.reconfigure(line_buffering=True)  # results as they come, also when redirected to a file
    layers = parse_layers(cfg.layers)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if cfg.model:
            model_path = Path(cfg.model)
        else:
            print("exporting a random-weight VGG16 ...", flush=True)
            model_path = tmp / "vgg16_random.onnx"
            export_random(model_path, cfg.size)
        data = cfg.data or (str(DEFAULT_DATA) if DEFAULT_DATA.is_file() else None)
        samples = dataset.read_samples(data)[: cfg.images] if data else generated_samples(tmp, cfg.images)
        source = data or f"{len(samples)} generated JPEGs"
        model = OnnxModel(model_path, device="auto", threads=THREADS)
        print(f"{len(samples)} images of {source} at {cfg.size} px, batches of {cfg.batch_size}, layers "
              f"{', '.join(layers)}; {model.providers[0]}, {THREADS} threads")
        if cfg.engine == "ray":
            engines(cfg, model, samples, layers)
            return
        if not cfg.only_render:
            maxima = dataset.ChannelMaxima(model, layers, threads=THREADS)
            load = dataset.Loader(samples, cfg.size, model.mean, model.std)
            x = np.stack([load(i) for i in range(len(samples))])  # (N, 3, S, S), decoded once for 1-3
            in_memory(cfg, model, maxima, x, layers)
            per_image = end_to_end(cfg, model, maxima, load, len(x), layers)
            single_projections(cfg, model, x, layers, per_image)
        print(f"\n6. rendering rate, {cfg.render_channels} strongest channels per layer")
        rendering_rate(model, mine_atlas(model_path, data, samples, tmp / "atlas", cfg), layers, cfg)


def in_memory(cfg: BenchConfig, model: OnnxModel, maxima: dataset.ChannelMaxima, x: np.ndarray,
              layers: list[str]) -> None:
    """1-3. Forward alone, the streaming pass and the naive way on the same preprocessed batches, interleaved."""
    N = len(x)
    chunks = [x[i : i + cfg.batch_size] for i in range(0, N, cfg.batch_size)]
    channels = {layer: spec.conv_channels(layer) for layer in layers}

    def forward_alone():
        for batch in chunks:
            model.predict(batch)

    def mining():
        state = TopK.empty(channels, 9)
        for b, batch in enumerate(chunks):
            ids = np.arange(b * cfg.batch_size, b * cfg.batch_size + len(batch))
            state = state.merged(ids, maxima.run(batch), int(ids[-1]) + 1)
        return state

    def naive():
        state = TopK.empty(channels, 9)
        for b, batch in enumerate(chunks):
            ids = np.arange(b * cfg.batch_size, b * cfg.batch_size + len(batch))
            _, acts, _ = model.run(batch)
            out = {}
            for layer in layers:
                a = acts[layer]
                flat = a.reshape(a.shape[0], a.shape[1], -1)
                where = flat.argmax(axis=2)
                out[layer] = (np.take_along_axis(flat, where[:, :, None], axis=2)[:, :, 0], where)
            state = state.merged(ids, out, int(ids[-1]) + 1)
        return state

    forward_alone(), mining()  # warm-up: session initialisation, allocator, thread pools
    t_forward, t_mining, t_naive = [], [], []
    for _ in range(cfg.repeats):  # interleaved
        t_forward.append(best(forward_alone, 1))
        t_mining.append(best(mining, 1))
        t_naive.append(best(naive, 1))
    t_forward, t_mining, t_naive = min(t_forward), min(t_mining), min(t_naive)
    reference, naive_state = mining(), naive()
    same = all(np.array_equal(reference.images[n], naive_state.images[n]) for n in layers)
    print("\n1-3. in memory (preprocessed tensors)")
    print(f"  forward alone (predict)          {t_forward:7.2f} s  {N / t_forward:7.1f} img/s")
    print(f"  mining, streaming pass           {t_mining:7.2f} s  {N / t_mining:7.1f} img/s")
    print(f"  naive (all outputs + NumPy)      {t_naive:7.2f} s  {N / t_naive:7.1f} img/s"
          f"   (same top-9 images as mining: {same})")
    ratio = t_forward / t_mining
    print(f"  mining throughput / forward throughput = {ratio:.2f} (target >= 0.8: "
          f"{'met' if ratio >= 0.8 else 'NOT met'});  naive: {t_forward / t_naive:.2f}")


def end_to_end(cfg: BenchConfig, model: OnnxModel, maxima: dataset.ChannelMaxima, load: dataset.Loader, N: int,
               layers: list[str]) -> float:
    """4. From the image files: ``stream`` against decode-then-predict; returns the streaming seconds per image."""
    channels = {layer: spec.conv_channels(layer) for layer in layers}

    def end_to_end_mining():
        stream(maxima, load, N, TopK.empty(channels, 9), cfg.batch_size, cfg.workers, bar=False)

    def end_to_end_forward():
        for i in range(0, N, cfg.batch_size):
            model.predict(np.stack([load(j) for j in range(i, min(i + cfg.batch_size, N))]))

    t_e2e_forward, t_e2e_mining = [], []
    for _ in range(cfg.repeats):
        t_e2e_forward.append(best(end_to_end_forward, 1))
        t_e2e_mining.append(best(end_to_end_mining, 1))
    t_e2e_forward, t_e2e_mining = min(t_e2e_forward), min(t_e2e_mining)
    print("\n4. end to end from the files (decode + resize + forward)")
    print(f"  decode, then predict, per batch  {t_e2e_forward:7.2f} s  {N / t_e2e_forward:7.1f} img/s")
    print(f"  stream ({cfg.workers} decoding threads)  {t_e2e_mining:7.2f} s  {N / t_e2e_mining:7.1f} img/s")
    print(f"  ratio = {t_e2e_forward / t_e2e_mining:.2f}")
    return t_e2e_mining / N


def single_projections(cfg: BenchConfig, model: OnnxModel, x: np.ndarray, layers: list[str],
                       per_image: float) -> None:
    """5. One projection of a single activation per entry (as ``render`` projects them), and a full atlas's cost."""
    print("\n5. rendering pass: one projection of a single activation (the strongest of a channel)")
    deconvnet = Deconvnet(model.weights)
    _, acts, switches = model.run(x[:1])
    total = 0.0
    for layer in layers:
        a = acts[layer]
        peaks = a[0].reshape(a.shape[1], -1).max(axis=1)
        picks = np.argsort(-peaks)[: cfg.projections]
        times = []
        for c in [picks[0], *picks.tolist()]:  # a warm-up first: the layouts are made on first use
            r, q = np.unravel_index(int(a[0, c].argmax()), a.shape[2:])
            start = time.perf_counter()
            deconvnet.project_points(a, layer, switches, [0], [c], [r], [q])
            times.append(time.perf_counter() - start)
        per = float(np.median(times[1:]))
        entries = 9 * spec.conv_channels(layer)
        total += per * entries
        print(f"  {layer}: {per * 1e3:7.1f} ms per entry; {entries} entries: {per * entries / 60:6.1f} min")
    print(f"  a full atlas of {', '.join(layers)} renders in about {total / 60:.1f} min, as long as streaming "
          f"{total / per_image:.0f} images at the rate above")

def engines(cfg: BenchConfig, model: OnnxModel, samples: list[Sample], layers: list[str]) -> None:
    """7. The local engine and the Ray engine with each of --ray-workers, whole mining runs from the files."""
    import contextlib
    import io
    import logging

    import ray

    from demo.analyses import ray_engine

    counts = [int(n) for n in cfg.ray_workers.split(",")]
    N = len(samples)
    channels = {layer: spec.conv_channels(layer) for layer in layers}
    maxima = dataset.ChannelMaxima(model, layers, threads=THREADS)
    load = dataset.Loader(samples, cfg.size, model.mean, model.std)
    ray.init(num_cpus=THREADS, include_dashboard=False, logging_level=logging.WARNING)

    def local(n: int = N) -> TopK:
        return stream(maxima, load, n, TopK.empty(channels, 9), cfg.batch_size, cfg.workers, bar=False)

    def on_ray(workers: int) -> tuple[float, float, int, TopK]:
        """(seconds in all, seconds until the first block is back, its images, the atlas) of one Ray run."""
        settings = ray_engine.RaySettings(workers, None, cfg.workers)
        state, first, begin = TopK.empty(channels, 9), None, time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # Ray's own notices
            for s, e, result in ray_engine.run_blocks("mine", settings, model, [x.path for x in samples], 0,
                                                      cfg.size, "crop", cfg.batch_size, {"layers": layers, "k": 9},
                                                      bar=False):
                state = state.union(result["topk"])
                first = first or (time.perf_counter() - begin, e - s)
        return time.perf_counter() - begin, *first, state

    try:
        local(cfg.batch_size)  # warm-up
        t_local, runs, same = [], {n: [] for n in counts}, True
        for _ in range(cfg.repeats):  # interleaved, so that background load hits every variant alike
            t_local.append(best(local, 1))
            for n in counts:
                runs[n].append(on_ray(n))
        reference = local()
        for n in counts:
            state = runs[n][-1][3]
            same &= all(np.array_equal(reference.images[x], state.images[x]) and
                        np.array_equal(reference.values[x], state.values[x]) for x in layers)
    finally:
        ray.shutdown()
    t_local = min(t_local)
    print(f"\n7. engines, whole mining runs from the files ({N} images; {THREADS} CPU cores in all)")
    print(f"  local engine (stream, {cfg.workers} decoding threads)  {t_local:7.2f} s  {N / t_local:7.1f} img/s")
    for n in counts:
        total, fixed, first_images, _ = min(runs[n])
        rate = (N - first_images) / max(total - fixed, 1e-9)  # once the first block is back: the pool is up
        print(f"  Ray engine, {n} worker(s)                   {total:7.2f} s  {N / total:7.1f} img/s   first block "
              f"({first_images} img) back after {fixed:5.2f} s (pool start); then {rate:6.1f} img/s, "
              f"{rate / n:6.1f} img/s per worker")
        print(f"    against local: {(total - t_local) / N * 1e3:+7.1f} ms per image in all, "
              f"{(1 / rate - t_local / N) * 1e3:+7.1f} ms per image once the pool is up")
    print(f"  Ray's atlas equals the local one: {same}")


if __name__ == "__main__":
    main()
