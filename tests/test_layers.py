"""The package is layered: a module imports sparsect modules of its own layer or lower ones.

Layers, bottom to top (a name covers the module and everything under it; the
longest listed name wins):

1. errors, notice, physics: no knowledge of data sets, priors or models;
2. priors: tissue classes, masks and the organ tables;
3. data: scans, phantoms, stores and loaders;
4. evaluation.metrics, evaluation.statistics, evaluation.figures;
5. models;
6. methods: what every method reads (a case) and the methods themselves, classical and
   learned;
7. settings, config, tracking, evaluation.report, registry, serving, inference, archive, deploy,
   stages, benchmarks, sweep;
8. cli.

Every import statement counts, at the top of a module or inside a function.

Nor may modules import one another in a circle, within a layer or across layers: a
circle makes what a module sees at import time depend on which module was imported
first. Here every import counts too, those inside functions included (a lazy import
only hides a circle), except those under ``if TYPE_CHECKING:``, which never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "sparsect"

LAYERS: dict[str, int] = {
    "sparsect.errors": 1,
    "sparsect.notice": 1,
    "sparsect.physics": 1,
    "sparsect.priors": 2,
    "sparsect.data": 3,
    "sparsect.evaluation.metrics": 4,
    "sparsect.evaluation.statistics": 4,
    "sparsect.evaluation.task": 4,
    "sparsect.evaluation.figures": 4,
    "sparsect.evaluation.segmentation": 4,
    "sparsect.models": 5,
    "sparsect.methods": 6,
    "sparsect.settings": 7,
    "sparsect.config": 7,
    "sparsect.tracking": 7,
    "sparsect.evaluation.report": 7,
    "sparsect.evaluation.followup_report": 7,
    "sparsect.registry": 7,
    "sparsect.serving": 7,
    "sparsect.inference": 7,
    "sparsect.archive": 7,
    "sparsect.prior_scan": 7,
    "sparsect.deploy": 7,
    "sparsect.stages": 7,
    "sparsect.benchmarks": 7,
    "sparsect.sweep": 7,
    "sparsect.pipeline": 7,
    "sparsect.cli": 8,
}
"""Module or package name -> layer (1 is the bottom)."""

PACKAGE_INITS: dict[str, int] = {
    "sparsect": 1,  # only the version string
    "sparsect.evaluation": 4,  # empty; its lowest modules are in layer 4
}
"""Package ``__init__`` files whose package spans several layers: matched by exact name only."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    """Layer of a sparsect module: exact package ``__init__`` entries, else longest prefix."""
    if module in PACKAGE_INITS:
        return PACKAGE_INITS[module]
    matches = [name for name in LAYERS if module == name or module.startswith(name + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def _is_type_checking(test: ast.expr) -> bool:
    """Whether an ``if`` tests ``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST, runtime_only: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of ``tree``; with ``runtime_only``, not those that only a type
    checker reads (the body of ``if TYPE_CHECKING:``; its ``else`` does run)."""
    found, pending = [], [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        if runtime_only and isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
    return found


def imported_modules(
    module: str, path: Path, known: set[str], runtime_only: bool = False
) -> list[str]:
    """Every sparsect module that ``path`` (module ``module``) imports, relative ones resolved.

    ``from package import name`` counts as an import of ``package.name`` when that
    is a module, else of ``package``. With ``runtime_only`` the imports under
    ``if TYPE_CHECKING:`` are left out.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in _import_nodes(tree, runtime_only):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                child = f"{target}.{alias.name}"
                found.append(child if child in known else target)
    return [name for name in found if name == "sparsect" or name.startswith("sparsect.")]


def test_every_module_has_a_layer():
    missing = [module for module in _modules() if layer_of(module) is None]
    assert not missing, (
        "modules without a layer: " + ", ".join(missing) + " -- add them to LAYERS in "
        "tests/test_layers.py (or to PACKAGE_INITS for a package __init__ spanning layers)"
    )


def test_imports_point_only_to_the_same_or_lower_layers():
    modules = _modules()
    known = set(modules)
    violations = []
    for module, path in modules.items():
        own = layer_of(module)
        if own is None:
            continue  # reported by test_every_module_has_a_layer
        for imported in sorted(set(imported_modules(module, path, known))):
            target = layer_of(imported)
            if target is None:
                violations.append(f"{module} -> {imported} (layer {own} -> no layer: add it)")
            elif target > own:
                violations.append(f"{module} -> {imported} (layer {own} -> layer {target})")
    assert not violations, "imports from higher layers:\n" + "\n".join(violations)


def import_graph() -> dict[str, list[str]]:
    """Module -> the other sparsect modules it imports at run time, each sorted.

    Only explicit imports count: importing ``a.b.c`` also runs ``a.b``'s ``__init__``,
    but Python runs that first, so it cannot close a circle through ``a.b.c``.
    """
    modules = _modules()
    known = set(modules)
    return {
        module: sorted(
            set(imported_modules(module, path, known, runtime_only=True)) & known - {module}
        )
        for module, path in modules.items()
    }


def import_cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Circles of ``graph``, each as its modules in import order, starting at its least name.

    A depth-first search meets a circle as an edge back to a module still on its path; so
    every group of modules that import one another yields at least one circle (not every
    one a large group holds, but fixing those shown and running again finds the rest).
    """
    on_path: list[str] = []
    state: dict[str, str] = {}  # "open" while on the path, then "done"
    cycles: set[tuple[str, ...]] = set()

    def visit(module: str) -> None:
        state[module] = "open"
        on_path.append(module)
        for target in graph.get(module, []):
            if state.get(target) == "open":
                cycle = on_path[on_path.index(target) :]
                first = cycle.index(min(cycle))
                cycles.add(tuple(cycle[first:] + cycle[:first]))
            elif target not in state:
                visit(target)
        on_path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return [list(cycle) for cycle in sorted(cycles)]


def _show(cycle: list[str]) -> str:
    return " -> ".join([*cycle, cycle[0]])


def test_cycle_search_finds_circles_and_only_circles():
    graph = {"a": ["b"], "b": ["c", "d"], "c": ["a"], "d": ["e"], "e": ["d"], "f": ["a"]}
    assert [_show(cycle) for cycle in import_cycles(graph)] == ["a -> b -> c -> a", "d -> e -> d"]
    assert import_cycles({"a": ["b", "c"], "b": ["c"], "c": []}) == []


def test_type_checking_imports_do_not_count(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from sparsect.errors import InputError\n"
        "else:\n"
        "    import sparsect.notice\n"
        "def f():\n"
        "    from sparsect.physics import geometry\n"
    )
    known = {"sparsect.errors", "sparsect.notice", "sparsect.physics", "sparsect.physics.geometry"}
    runtime = imported_modules("sparsect.probe", path, known, runtime_only=True)
    assert sorted(runtime) == ["sparsect.notice", "sparsect.physics.geometry"]
    assert "sparsect.errors" in imported_modules("sparsect.probe", path, known)


def test_no_import_circles():
    cycles = import_cycles(import_graph())
    assert not cycles, (
        "modules that import one another in a circle (imports inside functions count):\n"
        + "\n".join(_show(cycle) for cycle in cycles)
        + "\nmove what both need to a lower module, so that imports point one way"
    )
