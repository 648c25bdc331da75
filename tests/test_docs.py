"""The documentation: a short README whose results are the committed ones, a site whose
nav reaches every page and whose API reference covers every public module, and stage
paths named only in dvc.yaml (the Makefile asks ``sparsect stage-out`` for them).

``make docs`` (CI runs it after the tests) builds the site with ``mkdocs build --strict``,
which fails on a broken link, anchor or API reference; these tests check what a build
does not."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import PurePosixPath

import pytest
import yaml

from helpers import ROOT

README_MAX_LINES = 250
DOCS = ROOT / "docs"


def hooks():
    """docs/hooks.py, the site's MkDocs hooks (it renders the summary table)."""
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, more than {README_MAX_LINES}: move the detail "
        "to a page of docs/ and link it.")


def readme_results() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^<!-- results: reports/summary\.json[^>]*-->\n(.*?)\n<!-- /results -->",
                      text, re.S | re.M)
    assert match, "README.md: the results table between <!-- results: ... --> and " \
                  "<!-- /results --> is missing"
    return match.group(1)


def test_readme_results_are_the_committed_summary():
    summary = json.loads((ROOT / "reports" / "summary.json").read_text())
    expected = hooks().summary_table(summary)
    assert readme_results() == expected, (
        "README.md's results table differs from reports/summary.json; replace it with:\n"
        + expected)


def test_summary_table_shows_every_number_of_the_summary():
    summary = {"30": {"fbp": 27.97, "unet": 31.286, "dice": 0.8104},
               "120": {"fbp": 32.69, "tv": 36.77}}
    table = hooks().summary_table(summary).splitlines()
    assert table[0] == "| views | FBP | TV | unet | prior Dice |"
    # rows in view order, numbers rounded as written, a missing number marked
    assert table[2:] == ["| 30 | 27.97 | — | 31.29 | 0.810 |",
                         "| 120 | 32.69 | 36.77 | — | — |"]


def nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return [page for item in nav for page in nav_pages(item)]


def mkdocs_config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_every_page_is_in_the_nav_and_every_nav_entry_is_a_page():
    config = mkdocs_config()
    listed = nav_pages(config["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(set(listed)) == pages, (
        f"pages not in mkdocs.yml's nav: {sorted(set(pages) - set(listed))}; nav entries "
        f"without a page: {sorted(set(listed) - set(pages))}")
    assert len(listed) == len(set(listed)), "a page is listed twice in the nav"
    # the build must fail on what it would otherwise only report
    assert config["strict"] is True
    assert config["validation"]["nav"]["omitted_files"] == "warn"


def public_modules() -> list[str]:
    src = ROOT / "src"
    names = []
    for path in sorted((src / "sparsect").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if not any(part.startswith("_") for part in parts):
            names.append(".".join(parts))
    return names


def test_the_api_reference_covers_every_public_module():
    documented = {}
    for page in sorted((DOCS / "api").glob("*.md")):
        for name in re.findall(r"^::: (\S+)$", page.read_text(), re.M):
            documented.setdefault(name, []).append(page.name)
    modules = public_modules()
    assert len(modules) > 100, modules
    missing = [m for m in modules if m not in documented]
    unknown = [m for m in documented if m not in modules]
    twice = {m: pages for m, pages in documented.items() if len(pages) > 1}
    assert not missing and not unknown and not twice, (
        f"docs/api/: modules without a '::: module' entry: {missing}; entries naming no "
        f"module: {unknown}; modules documented twice: {twice}")


# --- stage paths live in dvc.yaml alone ---------------------------------------------

PATH_TOKEN = re.compile(r"(?<![\w/.$-])((?:artifacts|reports)/[\w@.${}()/-]*)")


def stage_paths_named(text: str, outputs: dict[str, list[str]]) -> list[str]:
    """The paths in ``text`` under artifacts/ or reports/ that are a stage's output, lie
    inside one or hold one (``artifacts/sim`` holds ``artifacts/sim/30``)."""
    owned = [PurePosixPath(p) for paths in outputs.values() for p in paths]
    named = []
    for token in PATH_TOKEN.findall(text):
        path = PurePosixPath(token.rstrip("/."))
        if len(path.parts) < 2:
            continue  # the folder artifacts/ or reports/ as a whole
        if any(path == o or o in path.parents or path in o.parents for o in owned):
            named.append(token)
    return named


OUTPUTS_EXAMPLE = {"prepare": ["artifacts/prepared"], "simulate@30": ["artifacts/sim/30"],
                   "report": ["reports/summary.json"]}


@pytest.mark.parametrize("text, named", [
    ("--prepared artifacts/prepared --out artifacts/fan/sim", ["artifacts/prepared"]),
    ("--sim artifacts/sim --x artifacts/sim/30/fbp.npy", ["artifacts/sim",
                                                          "artifacts/sim/30/fbp.npy"]),
    ("cat reports/summary.json; ls reports/fan reports/ artifacts/prepared-old", [
        "reports/summary.json"]),
    ("--prepared $(call out,prepare) --out artifacts/ablation", []),
])
def test_stage_paths_are_found_in_text(text, named):
    assert stage_paths_named(text, OUTPUTS_EXAMPLE) == named


@pytest.fixture(scope="module")
def outputs() -> dict[str, list[str]]:
    from sparsect.pipeline import stage_outputs

    return stage_outputs(ROOT)


def test_the_makefile_names_no_path_dvc_yaml_owns(outputs):
    assert outputs["prepare"] == ["artifacts/prepared"] and "train@30" in outputs
    named = stage_paths_named((ROOT / "Makefile").read_text(), outputs)
    assert not named, (
        f"the Makefile names stage outputs that dvc.yaml owns: {sorted(set(named))}; ask "
        "for them with $(call out,<stage>) instead")


def test_stage_out_prints_the_outputs_and_refuses_an_unknown_stage():
    sparsect = [sys.executable, "-m", "sparsect.cli", "stage-out"]
    done = subprocess.run([*sparsect, "prepare", "simulate@60"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["artifacts/prepared", "artifacts/sim/60"]
    done = subprocess.run([*sparsect, "train@7"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert "dvc.yaml has no stage 'train@7'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    done = subprocess.run([*sparsect, "--optional", "train@7", "train@30"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split() == ["artifacts/models/30"]


def test_the_summary_mark_is_filled_on_a_line_of_its_own_only():
    page = "Write `<!-- summary.json -->` in a page:\n<!-- summary.json -->\nmore\n"
    out = hooks().on_page_markdown(page, None, None, None)
    first, rest = out.split("\n", 1)
    assert first == "Write `<!-- summary.json -->` in a page:"
    assert rest.startswith("| views | FBP | TV |") and rest.endswith("|\nmore\n")


def test_docstring_examples_and_roles_render_as_code():
    import markdown

    text = ("See :func:`~sparsect.pipeline.stage_output`:\n\n"
            ">>> stage_output('a', {'a': ['x']})\n['x']\n\nAfter.")
    html = markdown.markdown(text, extensions=[hooks().DoctestBlocks(), "fenced_code"])
    assert "<code>sparsect.pipeline.stage_output</code>" in html and ":func:" not in html
    assert "<pre><code class=\"language-pycon\">&gt;&gt;&gt; stage_output" in html
    assert "['x']\n</code></pre>" in html and "<p>After.</p>" in html
