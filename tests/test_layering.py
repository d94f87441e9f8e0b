"""The package's layering, held by a test (README, "the floors"; issue 26 §2).

The import graph of ``onnx_explain`` is read from the source with :mod:`ast`: every ``import`` and
``from ... import``, those inside functions included (a lazy import hides a loop, it does not remove it),
those under ``if TYPE_CHECKING:`` left out (they never run). An edge goes to the module named, or to the
submodule when ``from package import submodule``.

Two rules: no cycle, and no module imports a module of a higher floor. The floors, lowest first:
base → graph (signature, convert) → runtime → model → targets/metrics → methods → explainer (and the calls
built on it) → the ``onnx_explain`` API → app → cli. A module of a floor may import its own floor (the
cycle check keeps that a DAG) and every floor below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "onnx_explain"
NAME = "onnx_explain"

#: floor names, by rank
FLOORS = ["base", "graph", "runtime", "model", "targets/metrics", "methods", "explainer", "API", "app", "cli"]

#: module prefix -> rank in FLOORS; the longest prefix wins, and ``onnx_explain`` itself (the API of
#: ``__init__.py``) matches only itself. Every module must fall under one (a new module is placed here).
LAYERS = {
    # base: errors, option checking and small helpers that import nothing else of the package
    "onnx_explain.errors": 0,
    "onnx_explain.options": 0,
    "onnx_explain.atomic": 0,
    "onnx_explain.lazy": 0,
    "onnx_explain.derived": 0,
    "onnx_explain.layout": 0,
    "onnx_explain.memory": 0,
    "onnx_explain.stats": 0,
    "onnx_explain.data": 0,
    "onnx_explain.schemas": 0,
    "onnx_explain.target_spec": 0,  # how a target is spelled (parsing, class indices): no torch, no model
    # graph: the file's signature and its conversion, and what reads the graph or the inputs alone
    "onnx_explain.signature": 1,
    "onnx_explain.convert": 1,
    "onnx_explain.layers": 1,
    "onnx_explain.text": 1,
    "onnx_explain.baselines": 1,
    "onnx_explain.features": 1,
    "onnx_explain.tabular": 1,  # tree and linear readers, TreeSHAP (tabular.table is higher)
    # runtime: onnxruntime sessions (reads the signature and cuts graphs at layers)
    "onnx_explain.runtime": 2,
    # model: Signature + Runner + the checked conversion
    "onnx_explain.model": 3,
    # targets/metrics: what is explained and how it is scored; LRP rules; heatmaps (they read the
    # metrics' channel aggregators)
    "onnx_explain.targets": 4,
    "onnx_explain.detectors": 4,  # a box target's detector graph edits (joins, NMS cut): loads models
    "onnx_explain.metrics": 4,
    "onnx_explain.lrp": 4,
    "onnx_explain.heatmap": 4,
    # methods
    "onnx_explain.methods": 5,
    # explainer and the calls built on it
    "onnx_explain.explainer": 6,
    "onnx_explain.evaluation": 6,
    "onnx_explain.sanity": 6,
    "onnx_explain.drift": 6,
    "onnx_explain.policy": 6,
    "onnx_explain.report": 6,
    "onnx_explain.generation": 6,
    "onnx_explain.tabular.table": 6,
    "onnx_explain.concepts": 6,
    # the public API (onnx_explain/__init__.py)
    "onnx_explain": 7,
    # the application and the command line
    "onnx_explain.app": 8,
    "onnx_explain.cli": 9,
    "onnx_explain.__main__": 9,
}


def modules(root: Path = PACKAGE, name: str = NAME) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package (a package by its ``__init__``)."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = [name, *p.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom node, at any depth, except in the body of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _known(name: str, mods) -> str | None:
    """``name`` or its longest parent that is a module of the package."""
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(
    module: str, source: str, mods, is_package: bool = False, root: str = NAME
) -> list[tuple[str, int]]:
    """(imported module of the package ``root``, line) for every import of ``module``'s ``source``, in
    order of lines."""
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in _import_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # ``from package import submodule`` imports the submodule
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        for t in targets:
            found = _known(t, mods) if t == root or t.startswith(root + ".") else None
            if found is not None and found != module:
                out.append((found, node.lineno))
    return sorted(out, key=lambda e: e[1])


def import_graph(mods) -> dict[str, dict[str, int]]:
    """module -> {imported module: first line importing it}."""
    graph = {}
    for m, path in mods.items():
        edges: dict[str, int] = {}
        for t, line in imports(m, path.read_text(encoding="utf-8"), mods, path.name == "__init__.py"):
            edges.setdefault(t, line)
        graph[m] = edges
    return graph


def cycles(graph: dict[str, dict]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, found = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _a_loop(graph, comp: list[str]) -> str:
    """One loop through ``comp``'s first module, with the line of each import: ``a:12 -> b:40 -> a``."""
    inside, start = set(comp), comp[0]
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]]):
            if w == start:
                hops = [f"{a} (line {graph[a][b]})" for a, b in zip(path, [*path[1:], start], strict=True)]
                return " -> ".join([*hops, start])
            if w in inside and w not in seen:
                seen.add(w)
                paths.append([*path, w])
    return ""  # pragma: no cover - a component always has a loop


def layer_of(module: str) -> int | None:
    if module == NAME:
        return LAYERS[NAME]
    keys = [k for k in LAYERS if k != NAME and (module == k or module.startswith(k + "."))]
    return LAYERS[max(keys, key=len)] if keys else None


def upward(graph) -> list[str]:
    """``a (floor) imports b (higher floor) at line n`` for every import of a higher floor."""
    out = []
    for a in sorted(graph):
        for b, line in sorted(graph[a].items()):
            la, lb = layer_of(a), layer_of(b)
            if la is not None and lb is not None and lb > la:
                out.append(f"{a} ({FLOORS[la]}) imports {b} ({FLOORS[lb]}) at line {line}")
    return out


@pytest.fixture(scope="module")
def graph():
    return import_graph(modules())


def test_every_module_is_placed_on_a_floor():
    unplaced = [m for m in modules() if layer_of(m) is None]
    assert not unplaced, f"modules on no floor (add them to LAYERS in {Path(__file__).name}): {unplaced}"


def test_the_package_has_no_import_cycle(graph):
    found = cycles(graph)
    assert not found, "import cycles (function-level imports count):\n" + "\n".join(
        f"  {', '.join(c)}: {_a_loop(graph, c)}" for c in found
    )


def test_no_module_imports_a_higher_floor(graph):
    bad = upward(graph)
    assert not bad, "imports of a higher floor:\n" + "\n".join(f"  {b}" for b in bad)


def test_the_reader_sees_lazy_imports_and_skips_type_checking_blocks(graph):
    """The checks are only as good as the graph: imports in functions, relative levels, submodules of a
    ``from package import`` and ``TYPE_CHECKING`` blocks, on a planted module."""
    mods = {n: None for n in ("p", "p.a", "p.b", "p.c", "p.sub", "p.sub.d", "p.sub.e")}
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import b\n"
        "if TYPE_CHECKING:\n"
        "    from .c import C\n"
        "else:\n"
        "    import p.sub.e\n"
        "def f():\n"
        "    from ..sub import d\n"
        "    return d\n"
    )
    assert imports("p.sub.x", source, mods, root="p") == [("p.sub", 2), ("p.sub.e", 6), ("p.sub.d", 8)]
    up = source.replace("from . import", "from .. import")
    assert imports("p.sub.x", up, mods, root="p")[0] == ("p.b", 2)
    # in a package's __init__, "." is the package itself (no edge to itself)
    assert imports("p.sub", source, mods, is_package=True, root="p") == [("p.sub.e", 6), ("p.sub.d", 8)]
    planted = {"p.a": {"p.b": 1}, "p.b": {"p.c": 3}, "p.c": {"p.a": 7}, "p.sub": {}}
    assert cycles(planted) == [["p.a", "p.b", "p.c"]]
    assert _a_loop(planted, ["p.a", "p.b", "p.c"]) == "p.a (line 1) -> p.b (line 3) -> p.c (line 7) -> p.a"
    # and on the package itself: a lazy import is an edge
    assert "onnx_explain.targets" in graph["onnx_explain.explainer"]
    assert "onnx_explain.runtime" in graph["onnx_explain.app.ray_engine"]  # inside RayWorker.__init__


def private_imports(mods) -> list[str]:
    """``module:line name from source`` for every private name (one leading underscore) a module of the
    package imports by name from another of its modules (issue 26 §2: what another module uses is public)."""
    out = []
    for module, path in mods.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in _import_nodes(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not (source == NAME or source.startswith(NAME + ".")):
                continue
            for a in node.names:
                if (
                    a.name.startswith("_")
                    and not a.name.startswith("__")
                    and f"{source}.{a.name}" not in mods
                ):
                    out.append(f"{module}:{node.lineno} {a.name} from {source}")
    return out


def test_no_module_imports_another_modules_private_names():
    assert private_imports(modules()) == []


def test_the_private_import_reader_finds_one(tmp_path):
    pkg = tmp_path / NAME
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("def _helper():\n    pass\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .a import _helper\n    return _helper\n")
    assert private_imports(modules(pkg)) == [f"{NAME}.sub.b:2 _helper from {NAME}.sub.a"]
