#!/usr/bin/env python
"""The ``src/`` dependencies of every ``dvc.yaml`` stage, computed from its imports.

A stage's command is ``sparsect <subcommand> ...``. The CLI gives each subcommand a
handler (``set_defaults(func=...)``), a small function in ``sparsect/cli.py`` whose body
imports the stage module. A stage's code is the transitive closure of the ``sparsect``
imports in that handler:

- every ``import`` statement of every module reached, at the top level or inside a
  function, relative imports resolved;
- the ``__init__.py`` of each package on the way (importing ``a.b.c`` runs
  ``a/__init__.py`` and ``a/b/__init__.py``), and for ``from a.b import c`` the
  submodule ``a/b/c.py`` when there is one;
- classes loaded by dotted path: when a module reached calls ``import_module``, the
  modules named by the ``_target_`` values in ``params.yaml`` (e.g.
  ``sparsect.models.unet.UNet``) join the closure, with their own imports.

``sparsect/cli.py`` and ``sparsect/config.py`` are left out, and their imports are not
followed: they parse the arguments and ``params.yaml``, and what they produce is tracked
by DVC already, as the stage's ``params`` and paths. Listing them would rerun every
stage for a new subcommand or a reworded help text.

For a ``foreach`` stage the command is ``do.cmd`` with ``${item}`` set to the first view
count of ``params.yaml`` ``sweep.views``. Per stage the result is the fewest paths in
``dvc.yaml`` form, sorted: a folder when every ``.py`` file under it (recursively) is in
the closure, else the files. Only deps under ``src/`` are this tool's business: the data
deps (``artifacts/prepared``, ...) are printed as ``dvc.yaml`` has them and never compared.

    python scripts/dvc_deps.py            # deps: blocks to paste into dvc.yaml
    python scripts/dvc_deps.py --check    # exit 1 with a diff when dvc.yaml differs
    python scripts/dvc_deps.py --write    # rewrite dvc.yaml's src/ deps in place
    python scripts/dvc_deps.py --modules sparsect.stages.prepare   # closure of modules
"""

from __future__ import annotations

import argparse
import ast
import difflib
import inspect
import shlex
import sys
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "sparsect"
EXCLUDED = ("sparsect.cli", "sparsect.config")
"""Argument and params.yaml parsing: tracked by DVC as params and paths (see above)."""
COMMAND = f"python {Path(__file__).relative_to(ROOT).as_posix()}"


def module_file(name: str, src: Path) -> Path | None:
    """The file that ``import name`` runs under ``src``: ``a/b/__init__.py`` for a package,
    ``a/b.py`` for a module; ``None`` when ``name`` is not a module (a class, a function)."""
    base = Path(src).joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Dotted names that the import statements anywhere in ``tree`` import.

    ``module`` is the module ``tree`` belongs to, for relative imports. ``from a.b import
    c`` gives ``a.b`` and ``a.b.c``, since ``c`` may be a submodule.
    """
    here = module.split(".") if is_package else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = here[:max(0, len(here) - node.level + 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            if not base:
                continue
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def calls_import_module(tree: ast.AST) -> bool:
    """Whether ``tree`` calls ``importlib.import_module`` (imports a module by its name)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name == "import_module":
                return True
    return False


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def import_closure(roots: Iterable[str], src: Path = SRC, package: str = PACKAGE,
                   exclude: Iterable[str] = EXCLUDED) -> dict[str, Path]:
    """``{module: file}`` of every module of ``package`` that importing ``roots`` runs.

    A root (or an imported name) ``a.b.c`` runs each of ``a``, ``a.b``, ``a.b.c`` that is a
    module or package under ``src``; each module found adds the names it imports (see
    :func:`imported_names`). Names outside ``package`` and the modules in ``exclude`` are
    skipped, and the imports of an excluded module are not followed.
    """
    excluded = set(exclude)
    found: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        parts = todo.pop().split(".")
        if parts[0] != package:
            continue
        for end in range(1, len(parts) + 1):
            name = ".".join(parts[:end])
            if name in found or name in excluded:
                continue
            path = module_file(name, src)
            if path is None:
                break
            found[name] = path
            todo.extend(imported_names(_parse(path), name, path.name == "__init__.py"))
    return found


def dotted_targets(params: Any, package: str = PACKAGE) -> set[str]:
    """The ``_target_`` values in ``params`` (nested dicts and lists) inside ``package``."""
    targets: set[str] = set()
    if isinstance(params, dict):
        for key, value in params.items():
            if key == "_target_" and isinstance(value, str):
                if value.split(".")[0] == package:
                    targets.add(value)
            else:
                targets |= dotted_targets(value, package)
    elif isinstance(params, list):
        for value in params:
            targets |= dotted_targets(value, package)
    return targets


def stage_closure(roots: Iterable[str], src: Path = SRC, targets: Iterable[str] = (),
                  package: str = PACKAGE, exclude: Iterable[str] = EXCLUDED) -> dict[str, Path]:
    """:func:`import_closure` of ``roots``, with ``targets`` (dotted paths the config names)
    as further roots when a module reached imports modules by name."""
    roots, targets = list(roots), sorted(targets)
    found = import_closure(roots, src, package, exclude)
    if targets and any(calls_import_module(_parse(path)) for path in found.values()):
        found = import_closure([*roots, *targets], src, package, exclude)
    return found


def minimal_paths(files: Iterable[Path], top: Path, base: Path) -> list[str]:
    """``files`` (under the folder ``top``) as the fewest paths relative to ``base``: a
    folder when every ``.py`` file under it is in ``files``, else the files; sorted."""
    wanted = {Path(f).resolve() for f in files}
    paths: list[Path] = []

    def visit(folder: Path) -> None:
        sources = [p.resolve() for p in folder.rglob("*.py")]
        if sources and all(p in wanted for p in sources):
            paths.append(folder)
            return
        for child in sorted(folder.iterdir()):
            if child.is_dir():
                visit(child)
            elif child.suffix == ".py" and child.resolve() in wanted:
                paths.append(child)

    visit(Path(top))
    return sorted(p.resolve().relative_to(Path(base).resolve()).as_posix() for p in paths)


def handler_imports(cmd: str) -> tuple[str, set[str]]:
    """The handler that ``sparsect.cli`` runs for ``cmd`` and the names its body imports.

    Raises:
        ValueError: if ``cmd`` is not a ``sparsect`` command.
        LookupError: if the subcommand sets no handler (``set_defaults(func=...)``).
    """
    from sparsect.cli import build_parser

    words = shlex.split(cmd)
    if len(words) < 2 or Path(words[0]).name != PACKAGE:
        raise ValueError(f"`{cmd}` is not a `{PACKAGE} <subcommand>` command")
    args, _ = build_parser().parse_known_args(words[1:])  # key=value overrides are extras
    func = getattr(args, "func", None)
    if func is None:
        raise LookupError(f"`{PACKAGE} {words[1]}` has no handler: its parser in "
                          "sparsect/cli.py needs set_defaults(func=<handler>)")
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    return f"{func.__module__}.{func.__qualname__}", imported_names(tree, func.__module__,
                                                                     False)


def _dep_path(dep: str | dict) -> str:
    return dep if isinstance(dep, str) else next(iter(dep))


def stages(root: Path = ROOT) -> Iterator[tuple[str, str, list[str], bool]]:
    """``(name, command, deps as written, foreach?)`` of each stage of ``dvc.yaml``; a
    ``foreach`` stage's command has ``${item}`` set to the first of ``sweep.views``."""
    dvc = yaml.safe_load((Path(root) / "dvc.yaml").read_text())
    params = yaml.safe_load((Path(root) / "params.yaml").read_text())
    for name, stage in dvc.get("stages", {}).items():
        foreach = "foreach" in stage
        body = stage["do"] if foreach else stage
        cmd = " ".join(str(body["cmd"]).split())
        if foreach:
            cmd = cmd.replace("${item}", str(params["sweep"]["views"][0]))
        yield name, cmd, [_dep_path(d) for d in body.get("deps", [])], foreach


def declared_deps(root: Path = ROOT) -> dict[str, list[str]]:
    """Per stage, its deps under ``src/`` as ``dvc.yaml`` lists them, sorted."""
    return {name: sorted(d.rstrip("/") for d in deps if d.startswith("src/"))
            for name, _, deps, _ in stages(root)}


def computed_deps(root: Path = ROOT) -> dict[str, list[str]]:
    """Per stage, the ``src/`` paths its command's code is in (see the module docstring)."""
    root = Path(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    targets = dotted_targets(params)
    result = {}
    for name, cmd, _, _ in stages(root):
        _, roots = handler_imports(cmd)
        files = stage_closure(roots, root / "src", targets).values()
        result[name] = minimal_paths(files, root / "src" / PACKAGE, root)
    return result


def deps_blocks(root: Path = ROOT) -> str:
    """``deps:`` blocks to paste into ``dvc.yaml``: each stage's data deps as written, then
    its computed ``src/`` deps."""
    computed = computed_deps(root)
    lines = []
    for name, cmd, deps, foreach in stages(root):
        indent = "    " if foreach else "  "
        lines += [f"# {cmd}", f"{name}:", *(["  do:"] if foreach else []), f"{indent}deps:"]
        lines += [f"{indent}  - {d}" for d in deps if not d.startswith("src/")]
        lines += [f"{indent}  - {d}" for d in computed[name]]
        lines.append("")
    return "\n".join(lines)


def check(root: Path = ROOT) -> list[str]:
    """A unified diff (dvc.yaml -> computed) of each stage whose ``src/`` deps differ."""
    declared, computed = declared_deps(root), computed_deps(root)
    diff = []
    for name in computed:
        if declared.get(name) != computed[name]:
            diff += difflib.unified_diff(declared.get(name, []), computed[name],
                                         f"dvc.yaml {name}", f"computed {name}", lineterm="")
    return diff


def write(root: Path = ROOT) -> list[str]:
    """Rewrites each stage's ``src/`` deps in ``dvc.yaml`` to the computed ones, in place
    (the rest of the file as it is); returns the stages changed."""
    path = Path(root) / "dvc.yaml"
    computed = computed_deps(root)
    changed, out, stage, in_deps = [], [], None, False
    for line in path.read_text().splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if indent == 2 and stripped.endswith(":") and not stripped.startswith("-"):
            stage, in_deps = stripped[:-1], False
        elif stripped == "deps:":
            in_deps = True
        elif in_deps and not stripped.startswith("- "):
            in_deps = False
        if in_deps and stripped.startswith("- src/"):
            if stage in computed:
                out += [f"{' ' * indent}- {dep}" for dep in computed.pop(stage)]
                changed.append(stage)
            continue
        out.append(line)
    path.write_text("\n".join(out) + "\n")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 with a diff when dvc.yaml's src/ deps differ")
    parser.add_argument("--write", action="store_true",
                        help="rewrite dvc.yaml's src/ deps in place to the computed ones")
    parser.add_argument("--modules", nargs="+", metavar="MODULE",
                        help="print the closure of these modules instead (e.g. "
                             "sparsect.stages.prepare)")
    args = parser.parse_args(argv)
    try:
        if args.modules:
            params = yaml.safe_load((ROOT / "params.yaml").read_text())
            files = stage_closure(args.modules, SRC, dotted_targets(params)).values()
            print("\n".join(minimal_paths(files, SRC / PACKAGE, ROOT)))
            return 0
        if args.write:
            write()
            diff = check()
            print("dvc.yaml's src/ deps rewritten." if not diff else "\n".join(diff))
            return 1 if diff else 0
        if args.check:
            diff = check()
            if diff:
                print("\n".join(diff))
                print(f"\ndvc.yaml's src/ deps differ from the imports: `{COMMAND}` prints "
                      "the deps: blocks to paste.", file=sys.stderr)
                return 1
            print("dvc.yaml's src/ deps match the imports.")
            return 0
        print(deps_blocks(), end="")
    except (LookupError, ValueError) as error:
        print(f"dvc_deps: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(SRC))
    sys.exit(main())
