"""The package is layered: a module imports sparsect modules of its own layer or lower ones.

Layers, bottom to top (a name covers the module and everything under it; the
longest listed name wins):

1. errors, notice, physics: no knowledge of data sets, priors or models;
2. priors: tissue classes, masks and the organ tables;
3. data: scans, phantoms, stores and loaders;
4. evaluation.metrics, evaluation.statistics, evaluation.figures;
5. models;
6. settings, config, tracking, evaluation.report, registry, inference, deploy, stages,
   benchmarks,
   sweep;
7. cli.

Every import statement counts, at the top of a module or inside a function.
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
    "sparsect.settings": 6,
    "sparsect.config": 6,
    "sparsect.tracking": 6,
    "sparsect.evaluation.report": 6,
    "sparsect.registry": 6,
    "sparsect.inference": 6,
    "sparsect.deploy": 6,
    "sparsect.stages": 6,
    "sparsect.benchmarks": 6,
    "sparsect.sweep": 6,
    "sparsect.cli": 7,
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


def imported_modules(module: str, path: Path, known: set[str]) -> list[str]:
    """Every sparsect module that ``path`` (module ``module``) imports, relative ones resolved.

    ``from package import name`` counts as an import of ``package.name`` when that
    is a module, else of ``package``.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
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
