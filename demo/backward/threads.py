"""Threads of the NumPy deconvnet's kernels: our own pool, with BLAS on one thread meanwhile.

The kernels split their work into independent items (blocks of Winograd tiles, parts of a copy, chunks of im2col
columns) that ``each`` runs on the threads, the calling one too, each thread taking the next item when done with
one: a thread slowed by another process holds up no one. Each item runs its own GEMMs, so BLAS runs on one thread
meanwhile (``our_threads``, via OpenBLAS's own setting): BLAS threads that spin while waiting for work cost more
than they bring, most of all on a CPU that other processes keep busy. Without control over BLAS's threads (not
OpenBLAS, or not Linux) the items run one after another and BLAS parallelises each GEMM itself.

The thread count is a process-wide setting that can change at any time: ``set_threads(n)`` (also OpenBLAS's own
count, for the GEMMs outside the kernels), ``using_threads(n)`` for a block of code, ``get_threads()``. Its
default: as many as BLAS was told to use (``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS``), else every core.
``observe()`` records how each call of ``each`` split its work (items, threads).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from base.cli import on_set_threads

PARALLEL_MIN_ELEMENTS = 1 << 18  # arrays smaller than this are moved by one thread
PARTS_PER_THREAD = 2  # parts of a large copy per thread


def default_threads() -> int:
    """The thread count at start: as many as BLAS uses (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS), else the cores
    this process may run on."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit() and int(os.environ[var]) > 0:
            return int(os.environ[var])
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def _openblas_threads() -> tuple[str, Callable[[], int], Callable[[int], None]] | None:
    """NumPy's OpenBLAS's (library path, get, set number of threads), found among the libraries loaded, or None."""
    try:
        with open("/proc/self/maps") as maps:  # Linux; elsewhere no control (items then run one after another)
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
                    get.restype, get.argtypes, set_.restype, set_.argtypes = ctypes.c_int, [], None, [ctypes.c_int]
                    return path, get, set_
    return None


_BLAS = _openblas_threads()
_LOCK = threading.Lock()  # guards everything below
_THREADS = default_threads()
_POOL: ThreadPoolExecutor | None = None  # helper threads (the calling thread is the other one), made on demand
_POOL_SIZE = 0
_INSIDE = 0  # calls inside ``our_threads`` now
_BLAS_OUTSIDE = 0  # BLAS's thread count to restore when the last of them leaves
_LOCAL = threading.local()  # .helper: this thread is one of the pool's; .log: the list ``observe`` fills


def blas_control() -> str | None:
    """The OpenBLAS library whose thread count the kernels set (None: no control; the kernels then run serially
    and BLAS on its own threads)."""
    return None if _BLAS is None else _BLAS[0]


def get_threads() -> int:
    """The process-wide thread count of the kernels (``set_threads``)."""
    return _THREADS


def set_threads(threads: int | None = None) -> int:
    """Run the kernels on ``threads`` threads from now on (None: ``default_threads()``), process-wide; OpenBLAS's
    own count (the GEMMs outside the kernels) is set to the same. Returns the new count. Safe while other threads
    project: their calls in progress finish with the count they started with."""
    global _THREADS, _BLAS_OUTSIDE
    threads = default_threads() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    with _LOCK:
        _THREADS = threads
        if _BLAS is not None:
            if _INSIDE:
                _BLAS_OUTSIDE = threads  # set when the last call inside ``our_threads`` leaves
            else:
                _BLAS[2](threads)
    return threads


@contextmanager
def using_threads(threads: int | None) -> Iterator[int]:
    """Inside: ``set_threads(threads)`` (None: no change); the previous count comes back on the way out. The count
    is process-wide: other threads projecting meanwhile use it too."""
    if threads is None:
        yield get_threads()
        return
    before = get_threads()
    try:
        yield set_threads(threads)
    finally:
        set_threads(before)


@contextmanager
def observe() -> Iterator[list[tuple[int, int]]]:
    """Inside, in this thread: each call of ``each`` appends (items, threads it ran them on: 1 when one after
    another) to the list yielded."""
    log: list[tuple[int, int]] = []
    previous = getattr(_LOCAL, "log", None)
    _LOCAL.log = log
    try:
        yield log
    finally:
        _LOCAL.log = previous


@contextmanager
def our_threads() -> Iterator[None]:
    """Inside: the kernels split their work between our threads (``each``), and BLAS runs on one thread (each of
    our threads runs its own GEMMs; no BLAS thread spins beside them). OpenBLAS's setting is process-wide: the
    first of overlapping calls saves it, the last restores it. Without control over BLAS's threads (not OpenBLAS
    on Linux), nothing changes: the kernels run serially, BLAS on its threads."""
    global _INSIDE, _BLAS_OUTSIDE
    if _BLAS is None:
        yield
        return
    with _LOCK:
        if _INSIDE == 0:
            _BLAS_OUTSIDE = _BLAS[1]()
            _BLAS[2](1)
        _INSIDE += 1
    try:
        yield
    finally:
        with _LOCK:
            _INSIDE -= 1
            if _INSIDE == 0:
                _BLAS[2](_BLAS_OUTSIDE)


def threads_now() -> int:
    """How many threads ``each`` runs its items on now: ``get_threads()`` inside ``our_threads`` (with control
    over BLAS), on a thread of our own; else 1."""
    if _INSIDE == 0 or _BLAS is None or getattr(_LOCAL, "helper", False):
        return 1
    return _THREADS


def serial(fn: Callable[[int], None], count: int) -> None:
    """Run ``fn(i)`` for i in range(count), one after another."""
    for i in range(count):
        fn(i)


def _pool(helpers: int) -> ThreadPoolExecutor:
    """The pool, with at least ``helpers`` threads (a larger one replaces it; the old one's threads end when idle)."""
    global _POOL, _POOL_SIZE
    with _LOCK:
        if _POOL is None or _POOL_SIZE < helpers:
            old, _POOL, _POOL_SIZE = _POOL, ThreadPoolExecutor(helpers, thread_name_prefix="deconv",
                                                               initializer=_mark_helper), helpers
            if old is not None:
                old.shutdown(wait=False)
        return _POOL


def _mark_helper() -> None:
    _LOCAL.helper = True


class _Items:
    """Items 0..count-1 of ``fn``, taken one at a time by any thread that calls ``work``; ``wait`` returns once all
    are done (items no helper took are done by the calling thread, so a helper that starts late costs nothing)."""

    def __init__(self, fn: Callable[[int], None], count: int) -> None:
        self.fn, self.count, self.next, self.done = fn, count, 0, 0
        self.error: BaseException | None = None
        self.cond = threading.Condition(threading.Lock())

    def work(self) -> None:
        while True:
            with self.cond:
                i = self.next
                if i >= self.count:
                    return
                self.next += 1
            try:
                if self.error is None:
                    self.fn(i)
            except BaseException as error:  # noqa: BLE001 - raised again in the calling thread
                self.error = self.error or error
            with self.cond:
                self.done += 1
                if self.done == self.count:
                    self.cond.notify_all()

    def wait(self) -> None:
        with self.cond:
            while self.done < self.count:
                self.cond.wait()
        if self.error is not None:
            raise self.error


def each(fn: Callable[[int], None], count: int) -> None:
    """Run ``fn(i)`` for i in range(count), independent items: inside ``our_threads``, on ``threads_now()``
    threads (the calling one too), each taking the next item when done with one (a thread slowed by another
    process holds up no one); else one after another."""
    threads = min(threads_now(), count)
    log = getattr(_LOCAL, "log", None)
    if log is not None:
        log.append((count, max(threads, 1) if count else 0))
    if threads < 2:
        for i in range(count):
            fn(i)
        return
    items = _Items(fn, count)
    pool = _pool(threads - 1)
    for _ in range(threads - 1):
        pool.submit(items.work)
    items.work()
    items.wait()


def parts(n: int, elements: int) -> list[tuple[int, int]]:
    """``range(n)`` in ``PARTS_PER_THREAD`` contiguous parts per thread of ``each`` (a thread that falls behind
    leaves the rest to the others) when ``elements`` are worth splitting, else in one part."""
    k = max(1, min(n, PARTS_PER_THREAD * threads_now() if elements >= PARALLEL_MIN_ELEMENTS else 1))
    return [(n * i // k, n * (i + 1) // k) for i in range(k)]


on_set_threads(set_threads)  # the commands' --threads (base.cli.set_threads) reach the kernels at run time
