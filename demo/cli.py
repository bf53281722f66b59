"""What every command line of the project shares: exit codes, error lines, atomic writes, CPU threads.

Torch-free and light, so that ``model.train`` and ``export`` use it too. The contract of every command:

- bad input (anything about the user's files or options: unreadable or invalid images, label files, model files,
  checkpoints, out-of-range values) is one line ``error: ...`` on stderr and exit status 2;
- an internal error (a bug, a failed write) is one line ``internal error: ...`` and exit status 1;
- no Python traceback reaches the user, unless ``--debug`` is given (or ``DECONVNET_DEBUG=1`` is set);
- Ctrl-C is ``interrupted`` and exit status 130.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

Config = TypeVar("Config")

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEBUG_ENV = "DECONVNET_DEBUG"


class UsageError(ValueError):
    """Bad input from the user (a file, an option); the text is one line that says what to change."""


def debug_requested(argv: list[str] | None = None) -> bool:
    """Whether ``--debug`` is on the command line or ``DECONVNET_DEBUG=1`` in the environment."""
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {err.strerror or text}"
    elif isinstance(err, OSError) and err.strerror and err.filename:
        text = f"{err.filename}: {err.strerror}"
    return " ".join(text.split())


def run_cli(run: Callable[[Config], object], config: Config, debug: bool | None = None) -> int:
    """Call ``run(config)`` and turn what it raises into an exit status and one line on stderr.

    ValueError (``UsageError``, ``model.images.ImageError``...), FileNotFoundError, IsADirectoryError,
    NotADirectoryError and PermissionError mean bad input: status 2. Anything else is an internal error: status 1.
    """
    debug = debug_requested() if debug is None else debug
    try:
        run(config)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        if debug:
            traceback.print_exc()
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:
        if debug:
            traceback.print_exc()
        print(f"internal error: {type(err).__name__}: {_one_line(err)} (run again with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL
    return EXIT_OK


def atomic_write(path: str | Path, write: Callable[[Path], object], sync: bool = True) -> Path:
    """Write ``path`` all at once: ``write(tmp)`` fills a temporary file in the same folder, which is flushed to
    disk (``sync``) and renamed over ``path``. A failure at any point leaves the old file (or none) and no
    temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if sync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def cpu_threads() -> int:
    """The CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def set_threads(threads: int | None) -> int:
    """Size NumPy's BLAS/OpenMP thread pools (effective only before NumPy is imported); returns the thread count.

    ``None`` keeps what the environment says and otherwise uses every core this process may run on.
    """
    if threads is None:
        threads = cpu_threads()
        for var in BLAS_THREAD_VARS:
            os.environ.setdefault(var, str(threads))
    else:
        for var in BLAS_THREAD_VARS:
            os.environ[var] = str(threads)
    return threads
