"""A data set streamed through the network for the analyses: which images, decoded in threads, and each image's
per-channel maxima straight from onnxruntime.

``read_samples`` finds the images (a cat-12 label file, a folder holding ``train_list.txt``, an ImageFolder tree or
a plain folder); ``gather_images`` takes a command line's mix of files, label files (their paths resolved against a
root when asked) and folders, optionally a class-balanced subset; ``Loader`` decodes one through the project's one
safe path (an unreadable file is one ``skipped ...`` line on stderr, and ``None``); ``batches`` decodes in
background threads one batch ahead of the consumer; ``ChannelMaxima`` runs a copy of the exported graph that ends,
for each chosen layer, in an ArgMax and a GatherElements over the flattened maps (``reduction_graph``), so that only
the (N, C) maxima and their positions leave the runtime. The atlas miner and the model-health pass both stream with
these.
"""

from __future__ import annotations

import hashlib
import sys
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

from base import spec
from base.images import IMAGE_EXTENSIONS
from base.labels import Sample, find_samples, parse_label_file
from demo.onnx_forward import OnnxModel, prune_graph, session_options
from demo.preprocess import preprocess


def read_samples(data: str | Path) -> list[Sample]:
    """The images of a cat-12 label file, a folder holding ``train_list.txt``, an ImageFolder tree (one folder per
    class) or a plain folder of images (searched recursively, label -1)."""
    try:
        samples = find_samples(data)[0]
    except ValueError:
        samples = []
        if not Path(data).is_dir():
            raise
    if samples:
        return samples
    root = Path(data)
    if root.is_dir():
        paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if paths:
            return [Sample(p, -1) for p in paths]
    raise ValueError(f"{root}: no images")


def gather_images(inputs: Sequence[str], root: str | None = None, limit: int = 0) -> list[Sample]:
    """The images named by ``inputs``: image files, label files (``path<TAB>label`` lines) and folders (a folder
    holding ``train_list.txt``, an ImageFolder tree or a plain folder of images, searched recursively).

    ``root``: the folder the relative paths of label files are resolved against (default: each label file's own
    folder). ``limit`` > 0 keeps that many, taken round-robin over the labels in list order (about equally many
    per class, the same ones on every run). FileNotFoundError for a path that does not exist; ValueError when
    nothing is found."""
    samples: list[Sample] = []
    for text in inputs:
        path = Path(text)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such image, label file or folder")
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            samples.append(Sample(path, -1))
        elif path.is_file():
            listed = parse_label_file(path)
            if root is not None:
                listed = [Sample(Path(root) / s.path.relative_to(path.parent), s.label, s.line) for s in listed]
            samples.extend(listed)
        else:
            samples.extend(read_samples(path))
    if not samples:
        raise ValueError(f"no images in {', '.join(inputs)}")
    if 0 < limit < len(samples):
        by_label: dict[int, list[Sample]] = defaultdict(list)
        for s in samples:
            by_label[s.label].append(s)
        queues = [list(reversed(v)) for v in by_label.values()]
        picked: list[Sample] = []
        while len(picked) < limit:
            for q in queues:
                if q and len(picked) < limit:
                    picked.append(q.pop())
        samples = picked
    return samples


def image_name(sample: Sample, root: Path | None = None) -> str:
    """How a row names its image: the path relative to ``root`` when inside it, else as given."""
    if root is not None:
        try:
            return Path(sample.path).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return str(sample.path)


@dataclass(frozen=True)
class Loader:
    """Reads image i of ``samples`` as the network sees it: (3, size, size) float32, normalised."""

    samples: Sequence[Sample]
    size: int
    mean: np.ndarray
    std: np.ndarray
    resize: str = "crop"

    def __call__(self, index: int) -> np.ndarray | None:
        try:
            return self.load(index)
        except ValueError as err:  # base.images.ImageError: one line naming the file and the reason
            tqdm.write(f"skipped {err}", file=sys.stderr)
            return None

    def load(self, index: int) -> np.ndarray:
        """Image ``index`` as (3, size, size) float32; ``base.images.ImageError`` (a ValueError) when unreadable."""
        return preprocess(self.samples[index].path, self.size, self.mean, self.std, self.resize)[0]


def batches(load: Callable[[int], np.ndarray | None], order: Sequence[int], batch_size: int,
            workers: int = 2) -> Iterator[tuple[list[int], np.ndarray, list[int], list[int]]]:
    """Yield (chunk, ids, images (B, 3, H, W), failed) per ``batch_size`` indices of ``order``; decoding runs in
    ``workers`` threads, one batch ahead of the consumer (0: in the calling thread)."""
    chunks = [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]

    def assemble(chunk: list[int], pictures: list[np.ndarray | None]):
        ids = [i for i, p in zip(chunk, pictures, strict=True) if p is not None]
        failed = [i for i, p in zip(chunk, pictures, strict=True) if p is None]
        x = np.stack([p for p in pictures if p is not None]) if ids else np.zeros((0, 3, 1, 1), np.float32)
        return chunk, ids, x, failed

    if workers <= 0:
        for chunk in chunks:
            yield assemble(chunk, [load(i) for i in chunk])
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mine-load")
    try:
        pending: deque = deque()
        it = iter(chunks)
        for chunk in it:
            pending.append((chunk, [pool.submit(load, i) for i in chunk]))
            if len(pending) == 2:
                break
        while pending:
            chunk, futures = pending.popleft()
            following = next(it, None)
            if following is not None:
                pending.append((following, [pool.submit(load, i) for i in following]))
            yield assemble(chunk, [f.result() for f in futures])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def reduction_graph(path: str | Path, layers: Sequence[str]) -> onnx.ModelProto:
    """A copy of the exported graph whose only outputs are, per layer L, ``L_max`` (N, C) float32, each channel's
    maximum over its feature map, and ``L_argmax`` (N, C) int64, its flat position (row * w + col, the first one
    on ties). Nodes the new outputs do not need (the head, the switches' index arithmetic) are dropped
    (``prune_graph``).
    """
    proto = onnx.load(str(path))
    graph = proto.graph
    flat_shape, plane_shape = "mine_flat_shape", "mine_plane_shape"
    graph.initializer.extend([numpy_helper.from_array(np.array([0, 0, -1], np.int64), flat_shape),
                              numpy_helper.from_array(np.array([0, 0], np.int64), plane_shape)])
    outputs = []
    for layer in layers:
        flat, where, value = f"mine_{layer}_flat", f"mine_{layer}_where", f"mine_{layer}_value"
        graph.node.extend([
            helper.make_node("Reshape", [layer, flat_shape], [flat], name=f"mine_{layer}_reshape"),
            helper.make_node("ArgMax", [flat], [where], name=f"mine_{layer}_argmax", axis=2, keepdims=1),
            helper.make_node("GatherElements", [flat, where], [value], name=f"mine_{layer}_gather", axis=2),
            helper.make_node("Reshape", [value, plane_shape], [f"{layer}_max"], name=f"mine_{layer}_max"),
            helper.make_node("Reshape", [where, plane_shape], [f"{layer}_argmax"], name=f"mine_{layer}_pos"),
        ])
        outputs += [helper.make_tensor_value_info(f"{layer}_max", TensorProto.FLOAT, None),
                    helper.make_tensor_value_info(f"{layer}_argmax", TensorProto.INT64, None)]
    graph.output.extend(outputs)
    return prune_graph(proto, [o.name for o in outputs])


class ChannelMaxima:
    """onnxruntime on ``reduction_graph``: images (N, 3, H, W) -> per layer, channel maxima and their positions.

    Uses the same execution providers as ``model`` (CUDA when it runs there), with its provider options (TF32).
    """

    def __init__(self, model: OnnxModel, layers: Sequence[str], threads: int | None = None) -> None:
        self.layers = list(layers)
        options = session_options(threads)
        proto = reduction_graph(model.path, self.layers)
        provider_options = getattr(model, "provider_options", {})
        providers = [(p, provider_options.get(p, {})) for p in model.providers]
        self.session = ort.InferenceSession(proto.SerializeToString(), options, providers=providers)
        self._names = [n for layer in self.layers for n in (f"{layer}_max", f"{layer}_argmax")]

    def run(self, image: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``image`` (N, 3, H, W) float32 -> {layer: (maxima (N, C) float32, positions (N, C) int64 flat)}."""
        values = self.session.run(self._names, {spec.INPUT_NAME: np.ascontiguousarray(image, dtype=np.float32)})
        return {layer: (values[2 * i], values[2 * i + 1]) for i, layer in enumerate(self.layers)}


def file_sha1(path: str | Path) -> str:
    """Hex SHA-1 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


_SHA1_CACHE: dict[tuple[str, int, int], str] = {}


def model_sha1(path: str | Path) -> str:
    """SHA-1 of a model file's bytes (cached by path, size and modification time)."""
    p = Path(path).resolve()
    stat = p.stat()
    key = (str(p), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA1_CACHE:
        _SHA1_CACHE[key] = file_sha1(p)
    return _SHA1_CACHE[key]
