"""The running environment is the pinned one: requirements/lock-linux-x86_64.txt.

`make setup` installs exactly the lock (plus torch from TORCH_SPEC and this project);
these tests catch a drifted environment (a package upgraded or added by hand) and a
lock that no longer fits pyproject.toml's ranges. The last test keeps the checkout
clean after `make run`: what the pipeline writes is either ignored or meant to be
committed.
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import tomllib
from importlib.metadata import distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from helpers import ROOT

LOCK = ROOT / "requirements" / "lock-linux-x86_64.txt"
# Not in the lock (as LOCK_EXCLUDE in the Makefile): torch comes from TORCH_SPEC and
# brings its own CUDA libraries; sparsect is this checkout.
EXCLUDED = re.compile(r"^(torch|triton|sparsect|nvidia-.*)$")


def fix() -> str:
    """What to run, for this environment (.venv, or VENV=... given to make)."""
    venv = Path(sys.prefix)
    venv = venv.relative_to(ROOT) if venv.is_relative_to(ROOT) else venv
    make = "make setup" if str(venv) == ".venv" else f"make setup VENV={venv}"
    return (
        f"Fix: `{make}` (reinstalls when the lock or pyproject.toml changed; to reinstall "
        f"regardless: `rm {venv}/.installed && {make}`). Packages installed beyond the lock: "
        f"`{venv}/bin/pip uninstall <names>`, or delete {venv} and `{make}`. After "
        "changing dependencies in pyproject.toml, `make lock` rewrites the lock."
    )


pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64",
    reason="the lock is for linux x86-64",
)


def locked() -> dict[str, Version]:
    """{canonical name: version} from the lock; every line must pin with ==."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one ==
        assert spec.operator == "==" and "*" not in spec.version, f"{LOCK.name}: {line}"
        pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def installed() -> dict[str, Version]:
    """{canonical name: version} of the distributions this interpreter sees."""
    found = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), Version(dist.version))
    return found


def public(version: Version) -> Version:
    """The version without a local label (2.13.0+cpu -> 2.13.0)."""
    return Version(version.public)


def test_lock_is_exact_and_excludes_torch_and_the_project():
    pins = locked()
    assert pins, f"{LOCK} lists no packages"
    assert not [name for name in pins if EXCLUDED.match(name)], (
        f"{LOCK.name} must not pin torch, its CUDA libraries or sparsect (TORCH_SPEC installs "
        "torch); run `make lock`"
    )
    assert {"pip", "setuptools"} <= set(pins), "pip and setuptools must be pinned too"


def test_environment_matches_the_lock():
    pins, have = locked(), installed()
    missing = sorted(f"{name}=={pins[name]}" for name in pins if name not in have)
    differ = sorted(
        f"{name}: installed {have[name]}, locked {pins[name]}"
        for name in pins
        if name in have and public(have[name]) != public(pins[name])
    )
    extra = sorted(
        f"{name}=={have[name]}" for name in have if name not in pins and not EXCLUDED.match(name)
    )
    problems = [
        f"{title}: {', '.join(items)}"
        for title, items in (
            ("locked but not installed", missing),
            ("installed at another version than locked", differ),
            ("installed but not in the lock", extra),
        )
        if items
    ]
    assert not problems, (
        f"This environment ({sys.prefix}) differs from {LOCK.relative_to(ROOT)}:\n"
        + "\n".join(problems)
        + f"\n{fix()}"
    )


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def torch_spec_version() -> Version:
    """The torch version of the Makefile's default TORCH_SPEC (torch is not in the lock)."""
    match = re.search(r"^TORCH_SPEC \?= torch==(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert match, "Makefile: TORCH_SPEC ?= torch==<version> not found"
    return Version(match.group(1))


def test_locked_versions_satisfy_the_pyproject_ranges():
    pins = locked()
    pins[canonicalize_name("torch")] = torch_spec_version()
    # the dependencies and the extras the Makefile's LOCK_EXTRAS resolves (dev; slurm: its
    # submitit launcher is tested; docs: CI builds the site) must be locked; another extra
    # is checked where the lock has it
    match = re.search(r"^LOCK_EXTRAS \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, "Makefile: LOCK_EXTRAS ?= <extras> not found"
    locked_extras = set(match.group(1).split(","))
    assert {"dev", "slurm", "docs"} <= locked_extras, locked_extras
    extras = project()["optional-dependencies"]
    ranges = [(r, True) for r in project()["dependencies"]]
    ranges += [(r, extra in locked_extras) for extra, reqs in extras.items() for r in reqs]
    missing, outside = [], []
    for text, must_be_locked in ranges:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            if must_be_locked:
                missing.append(text)
        elif not req.specifier.contains(version, prereleases=True):
            outside.append(f"{text} (locked {version})")
    assert not missing and not outside, (
        f"pyproject.toml and {LOCK.relative_to(ROOT)} disagree: "
        + (f"not locked: {', '.join(missing)}. " if missing else "")
        + (f"locked outside the range: {', '.join(outside)}. " if outside else "")
        + "Run `make lock`, then `make setup`."
    )


def git_ignores(path: str) -> bool:
    done = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
    assert done.returncode in (0, 1), "git check-ignore failed"
    return done.returncode == 0


def test_dvc_outputs_are_ignored_or_committed():
    """DVC writes a .gitignore entry for a cached output unless git already ignores it;
    outputs with `cache: false` (dvc.lock's small results) are committed."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        outs = [(out.def_path, out.use_cache) for stage in repo.index.stages for out in stage.outs]
    assert outs
    # as in a fresh clone: the outputs do not exist yet (git then matches them as files)
    unignored = [path for path, cached in outs if cached and not git_ignores(path)]
    assert not unignored, (
        f"cached DVC outputs not in .gitignore: {unignored}; `dvc repro` would write "
        ".gitignore entries for them: add them to .gitignore"
    )
    committed = [path for path, cached in outs if not cached]
    committed += ["dvc.lock", "reports/ablation.json"]
    ignored = [path for path in committed if git_ignores(path)]
    assert not ignored, f"results meant to be committed are ignored by .gitignore: {ignored}"
