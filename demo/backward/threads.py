"""Threads of the NumPy deconvnet's kernels: our own pool, with BLAS on one thread meanwhile.

The kernels split their work into independent items (blocks of Winograd tiles, parts of a copy, chunks of im2col
columns) that ``each`` runs on all threads, the calling one too, each thread taking the next item when done with
one: a thread slowed by another process holds up no one. Each item runs its own GEMMs, so BLAS runs on one thread
meanwhile (``our_threads``, via OpenBLAS's own setting): BLAS threads that spin while waiting for work cost more
than they bring, most of all on a CPU that other processes keep busy. Without control over BLAS's threads (not
OpenBLAS, or not Linux) the items run one after another and BLAS parallelises each GEMM itself.

Threads: as many as BLAS uses (``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS``), else every core.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

PARALLEL_MIN_ELEMENTS = 1 << 18  # arrays smaller than this are moved by one thread
PARTS_PER_THREAD = 2  # parts of a large copy per thread


def _cpu_threads() -> int:
    """Threads for the data movement: as many as BLAS uses (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS), else cores."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit() and int(os.environ[var]) > 0:
            return int(os.environ[var])
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


_THREADS = _cpu_threads()
_POOL = ThreadPoolExecutor(_THREADS, thread_name_prefix="deconv") if _THREADS > 1 else None


def _openblas_threads() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """NumPy's OpenBLAS's get / set number of threads, found among the libraries loaded, or None."""
    try:
        with open("/proc/self/maps") as maps:  # Linux; elsewhere no control (blocks then run one after another)
            paths = {line.split(maxsplit=5)[-1].strip() for line in maps if "openblas" in line.lower()}
    except OSError:
        return None
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))  # numpy's wheel keeps its OpenBLAS in numpy.libs
    paths = sorted(paths, key=lambda path: not path.startswith(os.path.join(numpy_dir, "numpy")))
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for suffix in ("", "64_"):
            for prefix in ("openblas", "scipy_openblas"):
                get, set_ = (getattr(lib, f"{prefix}_{verb}_num_threads{suffix}", None) for verb in ("get", "set"))
                if get is not None and set_ is not None:
                    get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
                    return get, set_
    return None


_BLAS_THREADS = _openblas_threads() if _THREADS > 1 else None
_BLAS_LOCK = threading.Lock()
_BLAS_USERS = [0, 0]  # calls inside ``our_threads`` now, and BLAS's thread count before the first of them


@contextmanager
def our_threads() -> Iterator[None]:
    """Inside: the kernels split their work between our threads (``each``), and BLAS runs on one thread (each of
    our threads runs its own GEMMs; no BLAS thread spins beside them). OpenBLAS's setting is process-wide: the
    first of overlapping calls saves it, the last restores it. Without several threads, or without control over
    BLAS's threads (not OpenBLAS on Linux), nothing changes: the kernels run serially, BLAS on its threads."""
    if _POOL is None or _BLAS_THREADS is None:
        yield
        return
    get, set_ = _BLAS_THREADS
    with _BLAS_LOCK:
        if _BLAS_USERS[0] == 0:
            _BLAS_USERS[1] = get()
            set_(1)
        _BLAS_USERS[0] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_USERS[0] -= 1
            if _BLAS_USERS[0] == 0:
                set_(_BLAS_USERS[1])


def serial(fn: Callable[[int], None], count: int) -> None:
    """Run ``fn(i)`` for i in range(count), one after another."""
    for i in range(count):
        fn(i)


def each(fn: Callable[[int], None], count: int) -> None:
    """Run ``fn(i)`` for i in range(count), independent items: inside ``our_threads``, on all threads (the calling
    one too), each taking the next item when done with one (a thread slowed by another process holds up no one);
    else one after another."""
    if _POOL is None or _BLAS_USERS[0] == 0 or count < 2:
        for i in range(count):
            fn(i)
        return
    items, lock = iter(range(count)), threading.Lock()

    def work() -> None:
        while True:
            with lock:
                i = next(items, None)
            if i is None:
                return
            fn(i)

    helpers = [_POOL.submit(work) for _ in range(min(_THREADS, count) - 1)]
    work()
    for future in helpers:
        future.result()


def threads_now() -> int:
    """How many threads ``each`` runs its items on now."""
    return _THREADS if _POOL is not None and _BLAS_USERS[0] > 0 else 1


def parts(n: int, elements: int) -> list[tuple[int, int]]:
    """``range(n)`` in ``PARTS_PER_THREAD`` contiguous parts per thread of ``each`` (a thread that falls behind
    leaves the rest to the others) when ``elements`` are worth splitting, else in one part."""
    k = max(1, min(n, PARTS_PER_THREAD * threads_now() if elements >= PARALLEL_MIN_ELEMENTS else 1))
    return [(n * i // k, n * (i + 1) // k) for i in range(k)]
