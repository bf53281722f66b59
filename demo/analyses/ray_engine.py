"""The passes over a data set (atlas mining, model health, predictions) on Ray Data: a pool of workers on this
machine or on a cluster, with exactly the local engine's results.

    python -m demo.mine --data DATA --out atlas/ --engine ray --ray-workers 4          # a local Ray runtime
    ray start --head   # then, on each other node: ray start --address HEAD_IP:6379
    python -m demo.health --data DATA --out out/health --engine ray --address auto     # join that cluster

How it runs. The data set's image list is cut into blocks of whole batches: a block starts at a multiple of
``--batch-size``, so every batch is the very batch the local engine makes, and onnxruntime sees the same inputs.
Ray Data hands the blocks (image ids and paths) to an actor pool (``map_batches`` with a callable class,
``ActorPoolStrategy(size=--ray-workers)``); each actor holds one onnxruntime session (CUDA when its node has a GPU)
and runs the local engine's own code on its block: the images are read and decoded by the project's decoder
(``dataset.Loader``, ``base.images``: the same limits and EXIF handling), then ``atlas.mine.stream``,
``health.measure.batch_tally`` or ``predict.classify``. A block returns only its result: its per-channel top-k
(value, image id, position), its per-batch health tallies, or its predictions, with the ``skipped FILE: reason``
message of each unreadable image. The driver folds the blocks in data-set order (a small reorder buffer), so the
results are the local engine's to the bit: top-k entries merged by (value, image id) (``TopK.union``), the float64
health sums added batch after batch in the same order, predictions in input order with the same path strings,
the skipped lines printed in data-set order.

Failures: an actor whose process dies (a crash, a lost node) is restarted by Ray and its block runs again; a
block's result is all or nothing, so nothing is counted twice or lost. Test hook: when the environment variable
``DECONVNET_RAY_FAIL_ONCE`` names a file that does not exist yet, the first block to start creates it and kills
its worker process (the tests check that the result is still exact).

Ray is optional (``pip install -r requirements-ray.txt``) and imported only inside the functions below. The model
file and the images must be at paths every node can read (one machine, or shared storage); the project's code
travels with the job to a cluster (``runtime_env`` ``py_modules``).
"""

from __future__ import annotations

import argparse
import os
import pickle
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

ENGINES = ("local", "ray")
INSTALL = "pip install -r requirements-ray.txt"
FAIL_ONCE_ENV = "DECONVNET_RAY_FAIL_ONCE"
REPO_ROOT = Path(__file__).resolve().parent.parent.parent
MAX_BATCHES_PER_BLOCK = 16  # a block's result is small; more blocks than workers keep the pool busy


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """``--engine``, ``--ray-workers`` and ``--address``; their values land in the config fields ``engine``,
    ``ray_workers`` and ``address``."""
    parser.add_argument("--engine", choices=ENGINES, default="local",
                        help="local: this process (decoding threads, one onnxruntime session); ray: a pool of "
                             f"Ray Data workers, here or on a cluster, same results ({INSTALL}) "
                             "(default: %(default)s)")
    parser.add_argument("--ray-workers", type=int, metavar="N",
                        help="with --engine ray: workers, each holding one onnxruntime session (default: the "
                             "GPUs of the cluster if it has any, else its CPU cores); not --workers, which counts "
                             "decoding threads")
    parser.add_argument("--address", metavar="HOST:PORT|auto",
                        help="with --engine ray: join a running Ray cluster (`ray start --head`, KubeRay); "
                             "default: start a local Ray runtime with --ray-workers workers")


@dataclass(frozen=True)
class RaySettings:
    """How the Ray engine runs: ``workers`` actors (None: see ``add_engine_options``), the cluster ``address``
    (None: a local runtime), ``threads`` decoding threads per actor, ``device`` (auto, cuda, cpu), ``tf32`` (on
    CUDA, allow TF32)."""

    workers: int | None = None
    address: str | None = None
    threads: int = 2
    device: str = "auto"
    tf32: bool = False


def settings_of(config) -> RaySettings | None:
    """The ``RaySettings`` of a command's config (fields ``engine``, ``ray_workers``, ``address``, ``device`` and
    optionally ``workers``), or None for the local engine; ValueError (one line) on options that do not fit."""
    engine, workers, address = config.engine, config.ray_workers, config.address
    if engine not in ENGINES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "local":
        if workers is not None or address is not None:
            raise ValueError("--ray-workers and --address need --engine ray")
        return None
    if workers is not None and workers < 1:
        raise ValueError(f"--ray-workers must be at least 1, got {workers}")
    return RaySettings(workers, address, max(0, getattr(config, "workers", 2)), config.device,
                       bool(getattr(config, "tf32", False)))


def import_ray():
    """The ``ray`` module with Ray Data; ValueError saying how to install it when it is missing."""
    try:
        import ray
        import ray.data  # noqa: F401  (the engine needs Ray Data, not only Ray Core)
    except ImportError as err:
        raise ValueError(f"--engine ray needs Ray Data, which is not installed ({err.name or err}): {INSTALL}") \
            from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT (or ray://HOST:PORT) address must accept a TCP connection; ValueError in one line otherwise."""
    target = address.split("://", 1)[-1]
    if address == "auto" or address.startswith("local") or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot reach the Ray cluster at {address} ({getattr(err, 'strerror', None) or err}); "
                         "start one with `ray start --head`, or leave out --address for a local runtime") from None


@contextmanager
def ray_runtime(settings: RaySettings) -> Iterator[int]:
    """Connect to Ray for one run and yield the number of workers. A runtime already initialised in this process
    (tests, notebooks) is used as it is; one joined or started here is let go at the end."""
    ray = import_ray()
    import logging

    started = False
    if not ray.is_initialized():
        if settings.address is not None:
            _check_reachable(settings.address)
        kwargs = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": True}
        try:
            if settings.address is None:  # workers on this machine import the project from where it lies
                from base.cli import cpu_threads

                ray.init(num_cpus=settings.workers or cpu_threads(), **kwargs)
            else:  # the project's code travels with the job to every node
                code = {"py_modules": [str(REPO_ROOT / "base"), str(REPO_ROOT / "demo")]}
                ray.init(address=settings.address, runtime_env=code, **kwargs)
        except (ConnectionError, RuntimeError, TimeoutError) as err:
            where = f"the Ray cluster at {settings.address}" if settings.address else "a local Ray runtime"
            reason = " ".join(str(err).split())[:300].rstrip(".")
            if settings.address and "Failed to connect" in reason and not os.environ.get("RAY_AUTH_MODE"):
                reason += ("; a cluster with token authentication (Ray's default) also needs RAY_AUTH_MODE=token "
                           "here and its token (~/.ray/auth_token or RAY_AUTH_TOKEN)")
            raise ValueError(f"cannot start or join {where}: {reason}") from None
        started = True
    try:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        use_gpus = gpus if settings.device != "cpu" else 0
        yield settings.workers or use_gpus or max(1, cpus)
    finally:
        if started:
            ray.shutdown()


def blocks_of(first: int, end: int, batch_size: int, workers: int) -> list[tuple[int, int]]:
    """[start, stop) image ranges covering ``first`` ... ``end - 1``, each a whole number of batches that start at
    multiples of ``batch_size`` counted from ``first`` (the local engine's batches), about four per worker and at
    most ``MAX_BATCHES_PER_BLOCK`` batches each."""
    batches = -(-(end - first) // batch_size)
    per_block = max(1, min(MAX_BATCHES_PER_BLOCK, -(-batches // (4 * workers))))
    step = per_block * batch_size
    return [(s, min(s + step, end)) for s in range(first, end, step)]


def _node_providers(device: str) -> list[str]:
    """The execution providers on this node: CUDA first when ``device`` allows it and a GPU is usable."""
    import onnxruntime as ort

    from demo.onnx_forward import cuda_device_count

    if device != "cpu" and cuda_device_count() > 0 and "CUDAExecutionProvider" in ort.get_available_providers():
        try:
            ort.preload_dlls()
        except Exception:  # noqa: BLE001  (CPU after all)
            return ["CPUExecutionProvider"]
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class _Collecting:
    """A ``Loader`` whose unreadable images become messages (image index -> ``skipped ...`` text) instead of lines
    on the worker's stderr; the driver prints them in data-set order."""

    def __init__(self, loader) -> None:
        self.loader, self.messages = loader, {}

    def __call__(self, index: int) -> np.ndarray | None:
        try:
            return self.loader.load(index)
        except ValueError as err:  # base.images.ImageError: one line naming the file and the reason
            self.messages[index] = f"skipped {err}"
            return None


class BlockWorker:
    """One actor of the pool: one onnxruntime session, and the local engine's code run on each block it gets.

    ``task``: "mine" (``params``: layers, k), "health" or "predict" (``params``: tta); ``size``, ``mean``, ``std``,
    ``resize``, ``batch_size`` and ``threads`` (decoding threads) as the local engine's.
    """

    def __init__(self, task: str, model_path: str, device: str, cpus: int, size: int, mean, std, resize: str,
                 batch_size: int, threads: int, params: dict, fail_once: str | None = None,
                 tf32: bool = False) -> None:
        from types import SimpleNamespace

        from base import spec
        from demo.analyses.dataset import ChannelMaxima
        from demo.onnx_forward import OnnxModel

        self.task, self.size, self.resize, self.batch_size, self.threads = task, size, resize, batch_size, threads
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.params, self.fail_once = params, fail_once
        if task == "predict":
            self.model = OnnxModel(model_path, device=device, threads=cpus, allow_tf32=tf32)
        else:  # only the reduction graph's session: the path and the providers are all ChannelMaxima reads
            layers = params["layers"] if task == "mine" else list(spec.CONV_LAYERS)
            self.layers = layers
            where = SimpleNamespace(path=Path(model_path), providers=_node_providers(device),
                                    provider_options={"CUDAExecutionProvider": {"use_tf32": "1" if tf32 else "0"}})
            self.maxima = ChannelMaxima(where, layers, threads=cpus)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data batch of blocks (columns ``block``, ``start``, ``paths``) -> (``block``, ``result``: pickled)."""
        if self.fail_once:
            try:
                os.close(os.open(self.fail_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os._exit(1)  # the test hook: this worker process dies once, mid-run
        results = [pickle.dumps(self.run(int(start), list(paths)))
                   for start, paths in zip(batch["start"], batch["paths"], strict=True)]
        return {"block": np.asarray(batch["block"], np.int64), "result": np.array(results, dtype=object)}

    def run(self, start: int, paths: list[str]) -> dict:
        """The block's result; image ids are data-set indices (``start`` + position in the block)."""
        from base.labels import Sample
        from demo.analyses.dataset import Loader, batches

        samples = [Sample(Path(p), -1) for p in paths]
        if self.task == "predict":
            from demo.analyses.predict import classify

            done, probs, errors = classify(self.model, [s.path for s in samples], self.batch_size, self.resize,
                                           self.params["tta"], bar=False)
            done_ids, cursor = [], 0
            for path in done:  # ``done`` keeps the order of ``paths``: find each one's index
                while samples[cursor].path != path:
                    cursor += 1
                done_ids.append(start + cursor)
                cursor += 1
            return {"done": done_ids, "probs": probs, "messages": [f"skipped {e}" for e in errors]}
        load = _Collecting(Loader(samples, self.size, self.mean, self.std, self.resize))
        if self.task == "mine":
            from base import spec
            from demo.analyses.atlas.mine import TopK, stream

            empty = TopK.empty({layer: spec.conv_channels(layer) for layer in self.layers}, self.params["k"])
            state = stream(self.maxima, load, len(samples), empty, self.batch_size, self.threads, bar=False)
            return {"topk": state.shifted(start), "messages": [load.messages[i] for i in sorted(load.messages)]}
        from demo.analyses.health.measure import batch_tally

        tallies, images = [], 0
        for _, ids, x, _ in batches(load, range(len(samples)), self.batch_size, self.threads):
            if ids:
                tallies.append(batch_tally(self.maxima.run(x)))
                images += len(ids)
        skipped = sorted(load.messages)
        return {"tallies": tallies, "images": images, "skipped": [str(paths[i]) for i in skipped],
                "messages": [load.messages[i] for i in skipped]}


def run_blocks(task: str, settings: RaySettings, model, paths: Sequence[str], first: int, size: int, resize: str,
               batch_size: int, params: dict, bar: bool = True, desc: str = "",
               echo: bool = True) -> Iterator[tuple[int, int, dict]]:
    """Run ``task`` on images ``first`` ... ``len(paths) - 1`` over the Ray pool; yield (start, stop, result) per
    block in data-set order; ``echo``: print each block's ``skipped`` lines on stderr as it is folded."""
    ray = import_ray()
    import logging

    from ray.data import ActorPoolStrategy, DataContext
    from ray.data.exceptions import SystemException

    if first >= len(paths):  # nothing left (a finished state): no pool to start
        return

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notices (progress bars off ...)
    with ray_runtime(settings) as workers:
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0) if settings.device != "cpu" else 0
        cpus = max(1, int(resources.get("CPU", 1)) // workers)
        blocks = blocks_of(first, len(paths), batch_size, workers)
        rows = [{"block": b, "start": s, "paths": [str(p) for p in paths[s:e]]} for b, (s, e) in enumerate(blocks)]
        context = DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        kwargs = {"task": task, "model_path": str(Path(model.path).resolve()), "device": settings.device,
                  "cpus": cpus, "size": size, "mean": np.asarray(model.mean).tolist(),
                  "std": np.asarray(model.std).tolist(), "resize": resize, "batch_size": batch_size,
                  "threads": settings.threads, "params": params, "fail_once": os.environ.get(FAIL_ONCE_ENV) or None,
                  "tf32": settings.tf32}
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            BlockWorker, fn_constructor_kwargs=kwargs, batch_size=1, batch_format="numpy",
            compute=ActorPoolStrategy(size=workers), num_cpus=cpus, num_gpus=min(1.0, gpus / workers) if gpus else 0,
            runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}})
        pending: dict[int, dict] = {}
        following = 0
        with tqdm(total=len(paths), initial=first, unit="img", desc=desc or task, disable=not bar,
                  file=sys.stderr) as pbar:
            try:
                for row in dataset.iter_rows():
                    pending[int(row["block"])] = pickle.loads(row["result"])
                    while following in pending:  # fold in data-set order
                        result = pending.pop(following)
                        for message in result["messages"] if echo else ():
                            tqdm.write(message, file=sys.stderr)
                        start, stop = blocks[following]
                        pbar.update(stop - start)
                        yield start, stop, result
                        following += 1
            except (ray.exceptions.RayError, SystemException) as err:
                cause = " ".join(str(getattr(err, "cause", None) or err).split())
                raise RuntimeError(f"the Ray run failed: {cause[:300]}") from None
        if following != len(blocks):
            raise RuntimeError(f"the Ray run returned {following} of {len(blocks)} blocks")


def mine(settings: RaySettings, model, samples: Sequence, state, layers: Sequence[str], size: int, resize: str,
         batch_size: int, bar: bool = True):
    """``atlas.mine.stream`` over the Ray pool: ``state`` (a ``TopK``) with images ``state.next`` ... merged in;
    returns the finished snapshot (``done`` set)."""
    from demo.analyses.atlas.mine import TopK

    params = {"layers": list(layers), "k": state.k}
    for _, _, result in run_blocks("mine", settings, model, [s.path for s in samples], state.next, size, resize,
                                   batch_size, params, bar, "mining"):
        state = state.union(result["topk"])
    return TopK(state.values, state.images, state.positions, len(samples), state.skipped, done=True)


def measure(settings: RaySettings, model, samples: Sequence, size: int | None = None, resize: str = "crop",
            batch_size: int = 16, rare_fraction: float | None = None, data: str = "", bar: bool = True):
    """``health.measure.measure`` over the Ray pool: the same ``HealthStats``, to the bit."""
    from base import spec
    from demo.analyses.health.measure import RARE_FRACTION, add_tally, health_stats

    size = size or model.input_size
    layers = list(spec.CONV_LAYERS)
    peak = {layer: np.zeros(spec.conv_channels(layer), np.float32) for layer in layers}
    total = {layer: np.zeros(spec.conv_channels(layer), np.float64) for layer in layers}
    firing = {layer: np.zeros(spec.conv_channels(layer), np.int64) for layer in layers}
    images, skipped = 0, []
    for _, _, result in run_blocks("health", settings, model, [s.path for s in samples], 0, size, resize,
                                   batch_size, {}, bar, "health"):
        for tally in result["tallies"]:  # batch after batch, as the local engine adds them
            add_tally(peak, total, firing, tally)
        images += result["images"]
        skipped += result["skipped"]
    return health_stats(model, images, peak, total, firing, len(samples), size, resize,
                        RARE_FRACTION if rare_fraction is None else rare_fraction, data, skipped)


def classify(settings: RaySettings, model, paths: Sequence[Path], batch_size: int = 16, resize: str = "crop",
             tta: bool = False, bar: bool = True) -> tuple[list[Path], np.ndarray, list[str]]:
    """``predict.classify`` over the Ray pool: the same (paths read, probabilities, error messages), in input
    order; the ``skipped`` lines are printed by the caller, as with the local engine."""
    done, probs, errors = [], [], []
    for _, _, result in run_blocks("predict", settings, model, [str(p) for p in paths], 0, model.input_size, resize,
                                   batch_size, {"tta": tta}, bar and len(paths) >= 32, "predict", echo=False):
        done += [paths[i] for i in result["done"]]
        probs.append(result["probs"])
        errors += [m.removeprefix("skipped ") for m in result["messages"]]
    K = len(model.class_names)
    empty = np.zeros((0, 2, K) if tta else (0, K), np.float32)
    return done, (np.concatenate(probs) if probs else empty), errors
