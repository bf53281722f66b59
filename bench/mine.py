"""Throughput of atlas mining (demo/mine.py) against the forward pass alone, measured side by side in one run.

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
4. end to end from the image files: ``demo.mine.stream`` (decoding in background threads) against decoding and
   ``predict`` one batch after the other;
5. the rendering pass, per entry: one deconvnet projection of a single activation at 224 px, for each mined
   layer, and what a full atlas of the layers would cost at that rate (k * C entries per layer). It does not
   depend on the data set's size, only on the number of channels.

Without --model a random-weight VGG16 is exported to a temporary file (speed does not depend on the weights);
that needs torch, the benchmark only.
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
    args = p.parse_args(argv)
    return BenchConfig(**{f.name: getattr(args, f.name) for f in fields(BenchConfig)})


CONFIG = parse_args()
THREADS = CONFIG.threads or len(os.sched_getaffinity(0))
os.environ["OPENBLAS_NUM_THREADS"] = str(THREADS)  # before NumPy loads OpenBLAS
os.environ["OMP_NUM_THREADS"] = str(THREADS)
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from demo import mine  # noqa: E402
from demo.deconv_numpy import Deconvnet  # noqa: E402
from demo.onnx_forward import OnnxModel  # noqa: E402
from demo.visualize import parse_layers  # noqa: E402
from model import spec  # noqa: E402
from model.data import Sample  # noqa: E402


def export_random(path: Path, size: int) -> None:
    """A random-weight VGG16 (the seed's head) exported to ``path`` (torch, here only)."""
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
        samples = mine.read_samples(data)[: cfg.images] if data else generated_samples(tmp, cfg.images)
        source = data or f"{len(samples)} generated JPEGs"

        model = OnnxModel(model_path, device="auto", threads=THREADS)
        maxima = mine.ChannelMaxima(model, layers, threads=THREADS)
        load = mine.Loader(samples, cfg.size, model.mean, model.std)
        x = np.stack([load(i) for i in range(len(samples))])  # (N, 3, S, S), decoded once for 1-3
        N = len(x)
        chunks = [x[i : i + cfg.batch_size] for i in range(0, N, cfg.batch_size)]
        channels = {layer: spec.conv_channels(layer) for layer in layers}
        print(f"{N} images of {source} at {cfg.size} px, batches of {cfg.batch_size}, layers {', '.join(layers)}; "
              f"{model.providers[0]}, {THREADS} threads")

        def forward_alone():
            for batch in chunks:
                model.predict(batch)

        def mining():
            state = mine.TopK.empty(channels, 9)
            for b, batch in enumerate(chunks):
                ids = np.arange(b * cfg.batch_size, b * cfg.batch_size + len(batch))
                state = state.merged(ids, maxima.run(batch), int(ids[-1]) + 1)
            return state

        def naive():
            state = mine.TopK.empty(channels, 9)
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

        def end_to_end_mining():
            mine.stream(maxima, load, N, mine.TopK.empty(channels, 9), cfg.batch_size, cfg.workers, bar=False)

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
        print(f"  mine.stream ({cfg.workers} decoding threads)  {t_e2e_mining:7.2f} s  {N / t_e2e_mining:7.1f} img/s")
        print(f"  ratio = {t_e2e_forward / t_e2e_mining:.2f}")

        print("\n5. rendering pass: one projection of a single activation (the strongest of a channel)")
        deconvnet = Deconvnet(model.weights)
        _, acts, switches = model.run(x[:1])
        total = 0.0
        for layer in layers:
            a = acts[layer]
            peaks = a[0].reshape(a.shape[1], -1).max(axis=1)
            picks = np.argsort(-peaks)[: cfg.projections]
            times = []
            for c in picks:
                signal = np.zeros_like(a)
                r, q = np.unravel_index(int(a[0, c].argmax()), a.shape[2:])
                signal[0, c, r, q] = a[0, c, r, q]
                start = time.perf_counter()
                deconvnet.project_down(signal, layer, switches)
                times.append(time.perf_counter() - start)
            per = float(np.median(times))
            entries = 9 * channels[layer]
            total += per * entries
            print(f"  {layer}: {per * 1e3:7.1f} ms per entry; {entries} entries: {per * entries / 60:6.1f} min")
        per_image = t_e2e_mining / N
        print(f"  a full atlas of {', '.join(layers)} renders in about {total / 60:.1f} min, as long as streaming "
              f"{total / per_image:.0f} images at the rate above")


if __name__ == "__main__":
    main()
