"""The code base stays ruff-clean (line length 120, pyproject.toml) and demo/ stays free of torch."""

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed (pip install -r requirements-dev.txt)")
def test_ruff_clean():
    result = subprocess.run(["ruff", "check", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_demo_sources_never_import_torch():
    for path in sorted((REPO / "demo").glob("*.py")) + [REPO / "app.py"]:
        if not path.exists():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in ("torch", "torchvision"), f"{path.name} imports {name}"
                assert not name.startswith(("model.vgg", "model.train", "model.deconvnet", "export")), \
                    f"{path.name} imports {name}, which needs torch"
