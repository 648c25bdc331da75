"""MkDocs hooks: the site's figures and tables come from the committed reports, so the
documentation cannot drift from what the pipeline produced.

- ``reports/plots/{psnr,ssim}.csv`` (the ``report`` stage's plots) become
  ``figures/{psnr,ssim}.png``, drawn at build time;
- the committed report figures (``reports/**/*.png`` that git tracks: not what a local
  run left beside them) are published at their own path;
- ``>>>`` examples in docstrings (run as doctests) are shown as code, not prose, and
  Sphinx roles (``:func:`x```) as code spans (:class:`DoctestBlocks`, added to the
  Markdown of pages and docstrings alike);
- a line ``<!-- summary.json -->`` in a page becomes :func:`summary_table` of
  ``reports/summary.json``, the table the README's results summary must equal
  (``tests/test_docs.py``).
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from markdown import Extension
from markdown.preprocessors import Preprocessor
from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
SUMMARY_MARK = "<!-- summary.json -->"
# summary.json's keys per view count, in the table's order, with their headers
COLUMNS = {"fbp": "FBP", "tv": "TV", "unet": "unet", "sg_unet": "sg_unet",
           "dice": "prior Dice"}


class _DoctestPreprocessor(Preprocessor):
    PROMPT = re.compile(r"^(\s*)>>> ")
    FENCE = re.compile(r"^\s*(```|~~~)")
    ROLE = re.compile(r":(?:mod|func|class|meth|attr|data|obj|exc):`~?([^`]+)`")

    def run(self, lines: list[str]) -> list[str]:
        out, i, fenced = [], 0, False
        while i < len(lines):
            line = lines[i]
            if self.FENCE.match(line):
                fenced = not fenced
            match = None if fenced else self.PROMPT.match(line)
            if not match:
                out.append(line if fenced else self.ROLE.sub(r"`\1`", line))
                i += 1
                continue
            indent, block = match.group(1), []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out += ["", f"{indent}```pycon", *block, f"{indent}```", ""]
        return out


class DoctestBlocks(Extension):
    """Fences each paragraph that starts with ``>>>`` as a Python console block, and
    turns Sphinx cross-reference roles into code spans."""

    def extendMarkdown(self, md) -> None:  # noqa: ANN001, N802 - Markdown's API
        md.preprocessors.register(_DoctestPreprocessor(md), "doctest_blocks", 29)


def summary_table(summary: dict) -> str:
    """The headline table of ``reports/summary.json``: test-split PSNR (dB) of each
    method and the predicted prior's Dice, one row per view count.

    >>> print(summary_table({"30": {"fbp": 27.97, "tv": 31.74, "dice": 0.81}}))
    | views | FBP | TV | prior Dice |
    |---:|---:|---:|---:|
    | 30 | 27.97 | 31.74 | 0.810 |
    """
    keys = [k for k in COLUMNS if any(k in row for row in summary.values())]
    lines = ["| views | " + " | ".join(COLUMNS[k] for k in keys) + " |",
             "|---:|" + "---:|" * len(keys)]
    for views in sorted(summary, key=int):
        row = summary[views]
        cells = [("—" if k not in row else f"{row[k]:.3f}" if k == "dice" else
                  f"{row[k]:.2f}") for k in keys]
        lines.append(f"| {views} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(csv_path: Path, ylabel: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    views = [int(r["views"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for method in [k for k in rows[0] if k != "views"]:
        ax.plot(views, [float(r[method]) for r in rows], marker="o", label=method)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(views, [str(v) for v in views])
    ax.set_xlabel("views")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _committed_figures() -> list[str]:
    """The PNGs under reports/ that git tracks (all of them outside a checkout)."""
    import subprocess

    done = subprocess.run(["git", "ls-files", "--", "reports/*.png"], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        return sorted(p.relative_to(ROOT).as_posix() for p in REPORTS.rglob("*.png"))
    return sorted(done.stdout.split())


@event_priority(100)  # before mkdocstrings reads the Markdown extensions
def on_config(config):  # noqa: ANN001, ANN201 - MkDocs' hook signature
    config.markdown_extensions.append(DoctestBlocks())
    return config


def on_files(files, config):  # noqa: ANN001, ANN201 - MkDocs' hook signature
    from mkdocs.structure.files import File

    for name, label in (("psnr", "test PSNR (dB)"), ("ssim", "test SSIM")):
        files.append(File.generated(config, f"figures/{name}.png",
                                    content=_plot(REPORTS / "plots" / f"{name}.csv", label)))
    for path in _committed_figures():
        files.append(File.generated(config, path, abs_src_path=str(ROOT / path)))
    return files


def on_page_markdown(markdown, page, config, files):  # noqa: ANN001, ANN201, ARG001
    mark = re.compile(rf"^{re.escape(SUMMARY_MARK)}$", re.M)  # a line of its own
    if mark.search(markdown):
        table = summary_table(json.loads((REPORTS / "summary.json").read_text()))
        markdown = mark.sub(lambda _: table, markdown)
    return markdown
