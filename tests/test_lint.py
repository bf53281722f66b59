"""The code base stays ruff-clean (line length 120, pyproject.toml). Which imports demo/ and base/ may make
(never torch) is tests/test_install.py's and tests/test_layout.py's."""

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def ruff_command() -> list[str]:
    """The ruff of this interpreter's environment: ``python -m ruff``, else the ``ruff`` beside ``python``."""
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    beside = Path(sys.executable).with_name("ruff")
    assert beside.is_file(), "ruff is not installed in this environment (pip install -r requirements-dev.txt)"
    return [str(beside)]


def test_ruff_clean():
    result = subprocess.run([*ruff_command(), "check", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
