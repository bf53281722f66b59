"""The files the page shows: one temporary folder per request, PNGs written fast, old folders deleted."""

from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image


class ResultStore:
    """A private temporary folder holding the newest ``keep`` requests' pictures (Gradio serves them from there).

    Args:
        keep: request folders kept on disk; older ones are deleted as new ones are made.
        compress_level: zlib level of the PNGs (1: fast, files ~20% bigger than the default 6).
    """

    def __init__(self, keep: int = 256, compress_level: int = 1) -> None:
        self.keep, self.compress_level = keep, compress_level
        self.root = Path(tempfile.mkdtemp(prefix="deconvnet-app-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.root, ignore_errors=True)  # at exit at the latest
        self._folders: deque[Path] = deque()
        self._count = 0
        self._lock = threading.Lock()

    def request_dir(self) -> Path:
        """A fresh folder for one request's files; the oldest are deleted beyond ``keep``."""
        with self._lock:
            self._count += 1
            folder = self.root / f"{self._count:07d}"
            self._folders.append(folder)
            stale = [self._folders.popleft() for _ in range(max(0, len(self._folders) - self.keep))]
        folder.mkdir(parents=True)
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    def png(self, picture: np.ndarray, folder: Path, name: str) -> str:
        """Write ``picture`` (H, W, 3) uint8 as ``folder/name.png``; returns the path as a string."""
        path = folder / f"{name}.png"
        Image.fromarray(picture).save(path, format="PNG", compress_level=self.compress_level)
        return str(path)

    def close(self) -> None:
        """Delete every file written so far."""
        self._cleanup()
