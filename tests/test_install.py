"""What a fresh machine needs: every import in the repository is pinned, and the app runs without torch.

The imports are read from the sources with ``ast`` (lazy imports inside functions included) and mapped to the
distributions that provide them with ``importlib.metadata.packages_distributions()``. A module is fine when it is
in the standard library, part of this repository, or provided by a distribution pinned (``name==version``) in
``requirements.txt`` or ``requirements-dev.txt``. The app's own closure (``app.py``, ``demo/`` and what they
import from ``base/``) must be covered by ``requirements.txt`` alone and never reach torch, except for the optional
extras (``OPTIONAL_EXTRAS``): each is pinned in its own requirements file, included by ``requirements-dev.txt``,
and imported only lazily (inside functions) by the one module that uses it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("base", "demo", "model", "export", "tests", "bench", "docs")
TORCH_ONLY = ("torch", "torchvision", "onnxscript")  # what requirements-dev.txt adds for training and export
# optional extras of the app side: top-level module -> (its requirements file, the only module importing it, lazily)
OPTIONAL_EXTRAS = {"ray": ("requirements-ray.txt", "demo/analyses/ray_engine.py")}


def sources() -> list[Path]:
    """Every Python file of the repository that a user or CI runs."""
    files = [REPO / "app.py"]
    for folder in SOURCE_DIRS:
        files += sorted((REPO / folder).rglob("*.py"))
    return [f for f in files if f.is_file()]


def local_names() -> set[str]:
    """Top-level names that resolve inside the repository (packages, app.py, sibling scripts of tests and bench)."""
    names = {"base", "demo", "model", "export", "app"}
    for folder in ("tests", "bench"):
        names |= {p.stem for p in (REPO / folder).glob("*.py")}
    return names


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): imports that only type checkers follow."""
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (its ``else`` branch included)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imported_modules(path: Path) -> dict[str, int]:
    """Absolute imports of a file as {dotted module name: first line}, relative imports resolved; imports under
    ``if TYPE_CHECKING:`` are left out (they never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1]) if path.is_relative_to(REPO) else ""
    found: dict[str, int] = {}
    for node in sorted(_runtime_nodes(tree), key=lambda n: getattr(n, "lineno", 0)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.setdefault(module, node.lineno)
            for alias in node.names:  # "from demo import display" imports the module demo.display
                found.setdefault(f"{module}.{alias.name}", node.lineno)
    return found


def parse_pins(path: Path, seen: set[Path] | None = None) -> dict[str, str]:
    """{normalised distribution name: version} of a requirements file, following ``-r`` includes."""
    seen = seen if seen is not None else set()
    if path in seen:
        return {}
    seen.add(path)
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            pins.update(parse_pins(path.parent / line.split(None, 1)[1], seen))
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*==\s*([^\s;]+)", line)
        assert match, f"{path.name}: {raw!r} is not pinned as name==version"
        pins[normalise(match.group(1))] = match.group(3)
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def distributions_of() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def unpinned(files: list[Path], pins: dict[str, str]) -> list[str]:
    """'file:line: module (why)' for every import that is neither stdlib, local nor pinned."""
    stdlib, local, problems = sys.stdlib_module_names, local_names(), []
    for path in files:
        for module, line in imported_modules(path).items():
            top = module.split(".")[0]
            if not top or top in stdlib or top in local or top == "__future__":
                continue
            dists = distributions_of().get(top)
            where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path.name}:{line}: {module}"
            if not dists:
                problems.append(f"{where} (not installed, not in any requirements file)")
            elif not any(normalise(d) in pins for d in dists):
                problems.append(f"{where} (from {', '.join(dists)}, which no requirements file pins)")
    return sorted(set(problems))


def test_the_import_reader_sees_lazy_relative_and_from_imports(tmp_path):
    pkg = REPO / "demo"
    sample = pkg / "_import_probe_for_tests.py"
    sample.write_text("import os\nfrom typing import TYPE_CHECKING\nfrom . import display\n\ndef f():\n"
                      "    import requests\n    from x.y import z\n\nif TYPE_CHECKING:\n    import torch\n")
    try:
        found = imported_modules(sample)
    finally:
        sample.unlink()
    assert {"os", "demo", "demo.display", "requests", "x.y", "x.y.z"} <= set(found)
    assert found["requests"] == 6 and "torch" not in found


def test_every_requirement_is_pinned_and_dev_includes_runtime():
    runtime = parse_pins(REPO / "requirements.txt")
    dev = parse_pins(REPO / "requirements-dev.txt")
    assert set(runtime) <= set(dev)
    assert "onnxruntime" not in dev, "onnxruntime and onnxruntime-gpu own the same folder: list only onnxruntime-gpu"


def test_every_import_in_the_repository_is_stdlib_local_or_pinned():
    pins = parse_pins(REPO / "requirements-dev.txt")
    assert unpinned(sources(), pins) == []


def test_an_unpinned_import_is_caught(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import json\nimport numpy\n\ndef later():\n    import requests_that_nobody_pins\n")
    problems = unpinned([probe], {"numpy": "2"})
    assert len(problems) == 1 and "requests_that_nobody_pins" in problems[0] and ":5:" in problems[0]


def local_closure(start: list[Path]) -> dict[Path, list[str]]:
    """Repository files reachable from ``start`` through imports, with the third-party modules each imports."""
    todo, seen, third_party = list(start), set(), {}
    stdlib, local = sys.stdlib_module_names, {"base", "demo", "model", "export", "app"}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        third_party[path] = []
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top in local:
                parts = module.split(".")
                for candidate in (REPO.joinpath(*parts).with_suffix(".py"), REPO.joinpath(*parts, "__init__.py")):
                    if candidate.is_file():
                        todo.append(candidate)
                if len(parts) > 1 and REPO.joinpath(parts[0], "__init__.py").is_file():
                    todo.append(REPO / parts[0] / "__init__.py")
            elif top and top not in stdlib and top != "__future__":
                third_party[path].append(module)
    return third_party


def app_closure() -> dict[Path, list[str]]:
    return local_closure([REPO / "app.py", *sorted((REPO / "demo").rglob("*.py")),
                          *sorted((REPO / "base").rglob("*.py"))])


def test_the_app_demo_and_base_never_import_torch():
    reached = app_closure()
    assert REPO / "base" / "spec.py" in reached  # the closure really follows imports into base/
    assert not [p for p in reached if p.is_relative_to(REPO / "model") or p.is_relative_to(REPO / "export")]
    bad = [f"{p.relative_to(REPO)} imports {m}" for p, mods in reached.items() for m in mods
           if m.split(".")[0] in TORCH_ONLY]
    assert bad == []


def test_requirements_txt_alone_covers_the_app():
    runtime = parse_pins(REPO / "requirements.txt")
    assert not set(TORCH_ONLY) & set(runtime), "torch, torchvision and onnxscript belong in requirements-dev.txt"
    problems = unpinned(sorted(app_closure()), runtime)
    extras = [p for p in problems if p.split(": ", 1)[1].split(".")[0].split(" ")[0] in OPTIONAL_EXTRAS]
    assert [p for p in problems if p not in extras] == []
    for problem in extras:  # an optional extra, reached only from its own module (laziness: the next test)
        module = problem.split(": ", 1)[1].split(".")[0].split(" ")[0]
        assert problem.startswith(OPTIONAL_EXTRAS[module][1] + ":"), problem


def module_level_imports(path: Path) -> set[str]:
    """Top-level names a file imports when it is imported (not inside functions or under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found, stack = set(), list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or _is_type_checking(node):
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
        stack.extend(ast.iter_child_nodes(node))
    return found


def test_optional_extras_are_pinned_apart_and_imported_lazily_by_one_module():
    runtime, dev = parse_pins(REPO / "requirements.txt"), parse_pins(REPO / "requirements-dev.txt")
    for module, (requirements, owner) in OPTIONAL_EXTRAS.items():
        extra = parse_pins(REPO / requirements)
        assert module in extra and module not in runtime and set(extra) <= set(dev)
        users = sorted(str(path.relative_to(REPO)) for path in app_closure() if any(
            m.split(".")[0] == module for m in imported_modules(path)))
        assert users == [owner]
        assert module not in module_level_imports(REPO / owner), f"{owner} must import {module} inside functions"
    probe = "import json\nif True:\n    import ray\n\ndef f():\n    import pandas\n"
    path = REPO / "demo" / "_lazy_probe_for_tests.py"
    path.write_text(probe)
    try:
        assert module_level_imports(path) == {"json", "ray"}
    finally:
        path.unlink()


@pytest.mark.parametrize("entry", ["app", "demo.visualize", "demo.predict", "demo.mine", "demo.occlusion",
                                   "demo.invariance", "demo.sanity", "demo.health", "demo.correspondence",
                                   "demo.atlas_site", "demo.faithfulness", "demo.featurevis",
                                   "demo.featurevis_pack", "demo.featurevis_figure"])
def test_entry_points_import_and_run_help_with_torch_blocked(entry):
    """Each command of the app side imports and answers --help in a process where ``import torch`` (and the optional
    extras) fail."""
    code = (f"import sys, runpy\nOPTIONAL = {tuple(OPTIONAL_EXTRAS)!r}\n"
            "for name in ('torch', 'torchvision', 'onnxscript', *OPTIONAL):\n"
            "    sys.modules[name] = None  # any import of them raises ImportError\n"
            f"sys.argv = ['{entry}', '--help']\n"
            f"runpy.run_module('{entry}', run_name='__main__', alter_sys=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower()
