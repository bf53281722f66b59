"""The import graph of the project: imports only go down the floors, and there is no circle.

Floors, bottom up (a module may import its own floor and the floors below, never one above):

0. ``base``: the torch-free ground (spec, images, labels, cli, display normalisation);
1. ``model`` (torch) and ``export``;
2. the inference chain: ``demo`` itself, ``demo.preprocess``, ``demo.onnx_forward``, ``demo.backward``,
   ``demo.display``;
3. ``demo.analyses`` (every module under it, present or future);
4. ``demo.app`` (every module under it);
5. the entries: ``app``, ``bench``, and the ``python -m demo.X`` entry modules.

Every import counts, at the top of a module, inside a function or under ``TYPE_CHECKING``. ``model`` never
imports ``demo``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("base", "model", "export", "demo", "bench")
CHAIN = ("demo.preprocess", "demo.onnx_forward", "demo.backward", "demo.display")
FLOOR_NAMES = ("base", "model/export", "inference chain", "analyses", "app", "entries")


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def floor(name: str) -> int:
    """The floor of module ``name`` (0 lowest); by prefix, so new modules fit without editing this test."""
    if under(name, "base"):
        return 0
    if under(name, "model") or under(name, "export"):
        return 1
    if name == "demo" or any(under(name, prefix) for prefix in CHAIN):
        return 2
    if under(name, "demo.analyses"):
        return 3
    if under(name, "demo.app"):
        return 4
    return 5  # app, bench, demo's entry modules


def project_modules() -> dict[str, Path]:
    """Dotted name -> file of every project module (``app.py`` and the packages' ``.py`` files)."""
    found = {"app": ROOT / "app.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that module ``name`` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # "from demo import display" imports the module demo.display
                sub = f"{source}.{alias.name}"
                targets.add(sub if sub in modules else source)
    edges = set()
    for target in targets:
        while target and target not in modules:  # "import demo.backward.kernels as k" -> that module
            target = target.rpartition(".")[0]
        if target and target != name:
            edges.add(target)
    return edges


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """Imports in functions, under TYPE_CHECKING, relative ones and ``from package import module`` all count."""
    modules = {"demo": tmp_path, "demo.display": tmp_path, "demo.app": tmp_path, "demo.app.x": tmp_path,
               "base.spec": tmp_path, "model.vgg": tmp_path}
    sample = tmp_path / "x.py"
    sample.write_text("from typing import TYPE_CHECKING\nfrom .. import display\nimport numpy\n"
                      "if TYPE_CHECKING:\n    from model.vgg import VGG\n"
                      "def f():\n    from base.spec import CONV_LAYERS\n")
    assert imports_of("demo.app.x", sample, modules) == {"demo.display", "model.vgg", "base.spec"}


def test_floors_by_prefix():
    assert [floor(n) for n in ("base.cli", "model.vgg", "export", "demo.backward.kernels", "demo.display",
                               "demo.analyses.new_one.cli", "demo.app.new_tab", "demo.predict", "app", "bench.deconv")
            ] == [0, 1, 1, 2, 2, 3, 4, 5, 5, 5]


def test_no_import_goes_up_a_floor():
    graph = import_graph()
    assert "demo.backward" in graph and "base.spec" in graph  # the graph sees the project
    back = sorted(f"{a} ({FLOOR_NAMES[floor(a)]}) -> {b} ({FLOOR_NAMES[floor(b)]})"
                  for a, targets in graph.items() for b in targets if floor(b) > floor(a))
    assert not back, "imports going up a floor:\n" + "\n".join(back)


def test_model_never_imports_demo():
    graph = import_graph()
    wrong = sorted(f"{a} -> {b}" for a, targets in graph.items() if under(a, "model") or under(a, "export")
                   for b in targets if under(b, "demo"))
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    graph = import_graph()
    found = cycles(graph)
    edges = [f"{a} -> {b}" for component in found for a in component for b in sorted(graph[a]) if b in component]
    assert not found, "import circles:\n" + "\n".join(edges)


def test_the_circle_finder_finds_circles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
