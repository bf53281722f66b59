"""What every command line of the project shares: exit codes, error lines, atomic writes, CPU threads.

Torch-free and light, so that ``model.train`` and ``export`` use it too. The contract of every command:

- bad input (anything about the user's files or options: unreadable or invalid images, label files, model files,
  checkpoints, out-of-range values) is one line ``error: ...`` on stderr and exit status 2;
- an internal error (a bug, a failed write) is one line ``internal error: ...`` and exit status 1;
- no Python traceback reaches the user, unless ``--debug`` is given (or ``DECONVNET_DEBUG=1`` is set);
- Ctrl-C is ``interrupted`` and exit status 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

Config = TypeVar("Config")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "models" / "vgg16_cat12.onnx"  # the model the app and the commands use by default
DEVICES = ("auto", "cuda", "cpu")  # where onnxruntime runs the network; auto: CUDA when a GPU is usable

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

    ValueError (``UsageError``, ``base.images.ImageError``...), FileNotFoundError, IsADirectoryError,
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


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: os.umask can only be read by setting it


def atomic_write(path: str | Path, write: Callable[[Path], object], sync: bool = True) -> Path:
    """Write ``path`` all at once: ``write(tmp)`` fills a temporary file in the same folder, which is flushed to
    disk (``sync``) and renamed over ``path``. A failure at any point leaves the old file (or none) and no
    temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # what open() would have made, not mkstemp's private 0600
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


_THREAD_LISTENERS: list[Callable[[int | None], object]] = []


def on_set_threads(listener: Callable[[int | None], object]) -> None:
    """Call ``listener(count)`` on every later ``set_threads`` (count None: the environment's). Thread pools that
    live above this module (the NumPy backward stage's) register here, so that ``--threads`` reaches them at run
    time while this module imports nothing of theirs."""
    _THREAD_LISTENERS.append(listener)


def set_threads(threads: int | None) -> int:
    """Size NumPy's BLAS/OpenMP thread pools and every registered pool (``on_set_threads``); returns the count.

    ``None`` keeps what the environment says and otherwise uses every core this process may run on. The
    environment variables size the pools of libraries not yet imported (a pool registered later reads them);
    registered pools, such as the NumPy backward stage's threads and NumPy's OpenBLAS, follow at any time.
    """
    if threads is None:
        threads = cpu_threads()
        for var in BLAS_THREAD_VARS:
            os.environ.setdefault(var, str(threads))
        listened = None  # the environment's count
    else:
        for var in BLAS_THREAD_VARS:
            os.environ[var] = str(threads)
        listened = threads
    for listener in _THREAD_LISTENERS:
        listener(listened)
    return threads


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    """``--debug``: show the Python traceback of an error (read by ``run_cli`` from the command line)."""
    parser.add_argument("--debug", action="store_true", help="on an error, also print the Python traceback")


def add_model_options(parser: argparse.ArgumentParser, resize: bool = True, norm: bool = False) -> None:
    """The options every inference command shares: ``--model``, ``--device``, ``--tf32``, optionally ``--resize`` and
    ``--norm``, and ``--debug``. Their values land in the config fields of the same names."""
    parser.add_argument("--model", metavar="FILE.onnx",
                        help=f"exported model (python -m export ...; default: {DEFAULT_MODEL.relative_to(REPO_ROOT)})")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where onnxruntime runs the network: auto (CUDA if a GPU is usable), cuda, cpu "
                             "(default: %(default)s)")
    parser.add_argument("--tf32", action="store_true",
                        help="on CUDA, allow TF32 convolutions: faster, but about 3e-4 from the CPU's activations "
                             "(default: off, exact float32)")
    if resize:
        from base.images import RESIZE_MODES  # base.images and base.display load NumPy: not at import

        parser.add_argument("--resize", choices=RESIZE_MODES, default="crop",
                            help="crop: short side to the input size, then the centre square, as in training; "
                                 "stretch: the whole image squashed to a square (default: %(default)s)")
    if norm:
        from base.display import NORMS

        parser.add_argument("--norm", choices=NORMS, default="minmax",
                            help="how a reconstruction becomes pixels: minmax (per image), signed (zero at "
                                 "mid-grey), percentile (1-99 clipped) (default: %(default)s)")
    add_debug_option(parser)


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files ``inputs`` name: folders searched recursively for image suffixes (sorted), anything else
    kept as given (a missing or unreadable file is reported when it is opened, beside the others)."""
    from base.images import IMAGE_EXTENSIONS

    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            found.append(item)
    return found


def parse_layers(text: str) -> list[str]:
    """"all", one layer or a comma-separated list -> conv layer names (validated)."""
    from base.spec import CONV_LAYERS

    layers = list(CONV_LAYERS) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = [name for name in layers if name not in CONV_LAYERS]
    if unknown or not layers:
        raise ValueError(f"unknown layer(s) {unknown or text!r}; expected 'all' or names from {', '.join(CONV_LAYERS)}")
    return layers


def parse_class(text: str | None, class_names: Sequence[str]) -> int | None:
    """A class given as an index ("3") or a name ("Bombay", case-insensitive) -> its index; None stays None."""
    if text is None:
        return None
    if text.strip().lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(class_names):
            raise ValueError(f"class {index} out of range 0..{len(class_names) - 1}")
        return index
    lowered = [n.lower() for n in class_names]
    if text.strip().lower() not in lowered:
        raise ValueError(f"unknown class {text!r}; classes: {', '.join(class_names)}")
    return lowered.index(text.strip().lower())
