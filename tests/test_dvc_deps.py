"""``dvc.yaml`` names the code each stage runs and the config its training resume hashes.

The ``src/`` deps of every stage must be the closure of its command's imports
(``scripts/dvc_deps.py``), and the ``train`` params must be the config sections that
the resume fingerprint hashes: otherwise ``dvc repro`` skips a stage whose code or
config changed, or reruns one for nothing.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from helpers import ROOT

COMMAND = "python scripts/dvc_deps.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("dvc_deps", ROOT / "scripts/dvc_deps.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("dvc_deps", module)
    spec.loader.exec_module(module)
    return module


dvc_deps = _load_script()
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture(scope="module")
def computed() -> dict[str, list[str]]:
    return dvc_deps.computed_deps(ROOT)


@pytest.mark.parametrize("stage", list(DVC["stages"]))
def test_stage_src_deps_are_the_imports_of_its_command(stage, computed):
    declared = dvc_deps.declared_deps(ROOT)[stage]
    expected = "\n".join(f"  - {path}" for path in computed[stage])
    assert declared == computed[stage], (
        f"dvc.yaml stage '{stage}' should list these src/ deps (and its data deps):\n"
        f"{expected}\n`{COMMAND}` prints every stage's deps: block; `{COMMAND} --check` "
        "shows the difference.")


OUTPUT_OPTIONS = {"--out", "--work", "--summary"}  # what a command writes; --views is a number
GENERATED = {"cohort", "followup_cohort"}  # made from their params alone (phantoms of own seeds)


@pytest.mark.parametrize("stage", list(DVC["stages"]))
def test_every_input_path_of_a_command_is_a_dep(stage):
    """A folder the command reads (every path option but its outputs) is a dep, so a
    changed input reruns the stage."""
    definition = DVC["stages"][stage]
    definition = definition.get("do", definition)
    words = definition["cmd"].split()
    inputs = {words[i + 1] for i, word in enumerate(words[:-1])
              if word.startswith("--") and word not in OUTPUT_OPTIONS | {"--views"}}
    assert inputs <= set(definition["deps"]), sorted(inputs - set(definition["deps"]))
    assert bool(inputs) != (stage in GENERATED), "the command names no input"


def test_a_stage_handler_is_found_through_the_cli():
    name, names = dvc_deps.handler_imports("sparsect prepare --data data --out out")
    assert name.startswith("sparsect.cli.")
    assert "sparsect.stages.prepare" in names


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture()
def fake(tmp_path) -> Path:
    """A package ``fake`` under ``tmp_path/src`` with a known import graph."""
    _write(tmp_path / "src", {
        # a package __init__ with a relative import: runs whenever any fake.* is imported
        "fake/__init__.py": "from .core import VALUE\n",
        "fake/core.py": (
            "from fake.util import helper  # a function, not a submodule\n"
            "from . import full\n"
            "import fake.skipped\n"
            "VALUE = 1\n"
            "\n"
            "def load():\n"
            "    from .sub import deep  # function level, relative\n"
            "    return deep\n"),
        "fake/util.py": "import os\n\ndef helper():\n    return os.sep\n",
        "fake/full/__init__.py": "from .a import A\n",
        "fake/full/a.py": "A = 1\n",
        "fake/sub/__init__.py": "",
        "fake/sub/deep.py": "from ..util import helper\n",
        "fake/sub/unused.py": "import fake.never\n",
        "fake/never.py": "",
        "fake/skipped.py": "import fake.hidden\n",
        "fake/hidden.py": "",
        "fake/loader.py": "import importlib\n\ndef load(path):\n"
                          "    return importlib.import_module(path)\n",
        "fake/plugins/__init__.py": "",
        "fake/plugins/impl.py": "from fake.full.a import A\n\nclass Thing:\n    pass\n",
        "fake/plugins/spare.py": "",
    })
    return tmp_path


def test_closure_of_a_known_graph(fake):
    src = fake / "src"
    found = dvc_deps.import_closure(["fake.core"], src, "fake", exclude=("fake.skipped",))
    assert set(found) == {"fake", "fake.core", "fake.util", "fake.full", "fake.full.a",
                          "fake.sub", "fake.sub.deep"}
    assert found["fake.sub"] == src / "fake/sub/__init__.py"
    # excluded: neither listed nor followed (fake.hidden is imported only by fake.skipped)
    assert "fake.hidden" not in found
    # a submodule runs its package's __init__, which imports fake.core
    assert set(dvc_deps.import_closure(["fake.sub.deep"], src, "fake", ())) == (
        set(found) | {"fake.skipped", "fake.hidden"})
    # names outside the package are no business of the closure
    assert dvc_deps.import_closure(["os", "numpy.linalg"], src, "fake") == {}


def test_minimal_paths_name_a_folder_only_when_all_of_it_is_used(fake):
    src = fake / "src"
    found = dvc_deps.import_closure(["fake.core"], src, "fake", exclude=("fake.skipped",))
    assert dvc_deps.minimal_paths(found.values(), src / "fake", fake) == [
        "src/fake/__init__.py", "src/fake/core.py", "src/fake/full", "src/fake/sub/__init__.py",
        "src/fake/sub/deep.py", "src/fake/util.py"]


def test_dotted_targets_join_when_a_module_imports_by_name(fake):
    src = fake / "src"
    params = {"variants": {"x": {"net": {"_target_": "fake.plugins.impl.Thing", "w": 2}}},
              "other": [{"_target_": "torch.nn.Identity"}]}
    targets = dvc_deps.dotted_targets(params, "fake")
    assert targets == {"fake.plugins.impl.Thing"}
    without = dvc_deps.stage_closure(["fake.util"], src, targets, "fake", ())
    assert "fake.plugins.impl" not in without  # nothing reached imports by name
    loaded = dvc_deps.stage_closure(["fake.loader"], src, targets, "fake", ())
    assert {"fake.plugins", "fake.plugins.impl", "fake.full.a"} <= set(loaded)
    assert "fake.plugins.spare" not in loaded


def test_relative_imports_resolve_against_the_module_or_package():
    import ast

    tree = ast.parse("from . import a\nfrom ..b import c\nfrom .d.e import f\n")
    assert dvc_deps.imported_names(tree, "p.q.mod", is_package=False) == {
        "p.q", "p.q.a", "p.b", "p.b.c", "p.q.d.e", "p.q.d.e.f"}
    assert dvc_deps.imported_names(tree, "p.q", is_package=True) == {
        "p.q", "p.q.a", "p.b", "p.b.c", "p.q.d.e", "p.q.d.e.f"}


def _leaves(node: object, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, (*path, str(key)))
    else:
        yield path


def _hashed_sections(params: dict) -> set[str]:
    """Top-level config sections with a key whose change changes the resume fingerprint.

    Every leaf of params.yaml is changed in turn, and each section of ``TRAINING_KEYS``
    that params.yaml lacks is added: what the fingerprint drops on purpose (the trainer's
    hardware keys) does not change it.
    """
    from omegaconf import OmegaConf

    from sparsect.stages.train import TRAINING_KEYS, fingerprint

    def digest(payload: dict) -> str:
        return fingerprint(OmegaConf.create(payload), "unet", 30)

    base = digest(params)
    probes = [*_leaves(params), *((key,) for key in TRAINING_KEYS if key not in params)]
    sections = set()
    for path in probes:
        changed = copy.deepcopy(params)
        node = changed
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = "a value params.yaml does not hold"
        if digest(changed) != base:
            sections.add(path[0])
    return sections


def test_train_params_are_the_config_the_resume_fingerprint_hashes():
    # Compared per top-level section: dvc.yaml may name a whole section where the
    # fingerprint drops some of its keys (`trainer`: devices, strategy, ... change how,
    # not what, is trained), or only the keys the stage reads where the fingerprint
    # hashes the whole section (`evaluate.hu_min`, `evaluate.hu_max` of `evaluate`).
    # What must agree is which sections can change the trained models.
    listed = []
    for entry in DVC["stages"]["train"]["do"]["params"]:
        listed += [*entry.values()][0] if isinstance(entry, dict) else [entry]
    # sweep.models says which models train, not how: it reruns the stage, and a model's
    # fingerprint holds its name
    in_dvc = {str(key).split(".")[0] for key in listed if key != "sweep.models"}
    hashed = _hashed_sections(PARAMS)
    assert in_dvc == hashed, (
        f"dvc.yaml train params miss {sorted(hashed - in_dvc)} and list "
        f"{sorted(in_dvc - hashed)} beyond the sections the resume fingerprint hashes "
        "(TRAINING_KEYS in src/sparsect/stages/train.py)")
