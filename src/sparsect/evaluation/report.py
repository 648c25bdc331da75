"""The merged report: ``metrics.json``, ``summary.json``, CSVs for ``dvc plots``, ``report.md``.

``metrics.json`` holds every number (per subject, per region, confidence
intervals); ``summary.json`` holds the few headline numbers that ``dvc metrics
show``/``diff`` and ``dvc exp show`` compare (see :func:`summary`).

Methods are listed in one order everywhere: the classical reconstructions
(:data:`CLASSICAL`), then the learned models in the order of the variant table
(the ``models`` argument), then anything else alphabetically.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from sparsect.data.store import atomic_write_bytes, atomic_write_json
from sparsect.notice import RESEARCH_NOTICE

CLASSICAL = ("fbp", "sirt", "tv")
REGION_NAMES = {"lung": "lung", "soft_tissue": "soft tissue", "bone": "bone", "body": "body"}

SUMMARY_BASELINES = ("fbp", "tv")
"""Classical methods in ``summary.json``: FBP and the strongest classical baseline."""
SUMMARY_LIMIT = 12
"""At most this many numbers in ``summary.json``."""


def method_order(names: Iterable[str], models: Sequence[str] = ()) -> list[str]:
    """``names`` sorted: :data:`CLASSICAL` first, then ``models`` in their order, then the
    rest alphabetically."""
    ranked = [*CLASSICAL, *(m for m in models if m not in CLASSICAL)]
    return sorted(names, key=lambda m: (ranked.index(m) if m in ranked else len(ranked), m))


def _methods(per_view: dict, models: Sequence[str] = ()) -> list[str]:
    return method_order((m for m in per_view if not m.startswith("_")), models)


def _label(method: str, values: dict) -> str:
    return f"{method} (upper bound)" if values.get("upper_bound") else method


def _ci(values: dict, key: str, digits: int) -> str:
    mean = values[key]
    lo, hi = values.get("ci95", {}).get(key, (float("nan"), float("nan")))
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def write_plots(merged: dict, folder: Path, models: Sequence[str] = ()) -> list[Path]:
    """``psnr.csv`` and ``ssim.csv``: one row per view count, one column per method."""
    written = []
    methods = method_order({m for per_view in merged.values() for m in _methods(per_view)},
                           models)
    for key in ("psnr", "ssim"):
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["views", *methods])
        for views, per_view in sorted(merged.items(), key=lambda item: int(item[0])):
            writer.writerow([views, *(f"{per_view[m][key]:.4f}" if m in per_view else ""
                                      for m in methods)])
        path = Path(folder) / f"{key}.csv"
        atomic_write_bytes(path, buffer.getvalue().encode())
        written.append(path)
    return written


def markdown(merged: dict, figures: str = "views", models: Sequence[str] = ()) -> str:
    """``report.md``: per view count, the metrics table and the per-region table."""
    lines = ["# sparsect evaluation report", "", f"> {RESEARCH_NOTICE}", "",
             "Test split only. PSNR and SSIM on HU clipped to a fixed window with a fixed data "
             "range; RMSE in HU. Brackets: 95% bootstrap confidence interval over test slices "
             "(1000 resamples; `metrics.json` also has the interval from resampling whole "
             "subjects, and per-subject means). Residual: `||A x - y|| / ||y||` against the "
             "measured sparse sinogram.", ""]
    for views, per_view in sorted(merged.items(), key=lambda item: int(item[0])):
        settings = per_view.get("_settings", {})
        window = settings.get("hu_window", ["?", "?"])
        lines += [f"## {views} views", "",
                  f"{settings.get('slices', '?')} test slices from "
                  f"{len(settings.get('subjects', []))} subjects; window {window[0]:.0f} to "
                  f"{window[1]:.0f} HU (data range {settings.get('data_range_hu', 0):.0f} HU).",
                  "",
                  "| method | PSNR (dB) | SSIM | RMSE (HU) | residual | Dice |",
                  "|---|---|---|---|---|---|"]
        for method in _methods(per_view, models):
            values = per_view[method]
            dice = f"{values['dice']:.3f}" if "dice" in values else ""
            lines.append(f"| {_label(method, values)} | {_ci(values, 'psnr', 2)} | "
                         f"{_ci(values, 'ssim', 4)} | {_ci(values, 'rmse_hu', 1)} | "
                         f"{values.get('residual', float('nan')):.4f} | {dice} |")
        if "_reference" in per_view:
            lines.append(f"| full-dose reference | | | | "
                         f"{per_view['_reference']['residual']:.4f} | |")
        lines += ["", "Per region (full-dose masks): PSNR (dB) / RMSE (HU)", "",
                  "| method | " + " | ".join(REGION_NAMES.values()) + " |",
                  "|---|" + "---|" * len(REGION_NAMES)]
        for method in _methods(per_view, models):
            regions = per_view[method].get("regions", {})
            cells = [f"{regions[r]['psnr']:.2f} / {regions[r]['rmse_hu']:.1f}" if r in regions
                     else "" for r in REGION_NAMES]
            lines.append(f"| {_label(method, per_view[method])} | " + " | ".join(cells) + " |")
        lines += ["", f"![{views} views]({figures}/{views}/panel.png)", "",
                  f"![{views} views residuals]({figures}/{views}/residuals.png)", ""]
    return "\n".join(lines)


def _is_learned(method: str, values: dict, models: Sequence[str]) -> bool:
    """A trained model: named in ``models``, or evaluated with a prior (classical methods
    have none)."""
    return method in models or "prior" in values


def summary(merged: dict, models: Sequence[str] = ()) -> dict[str, dict[str, float]]:
    """The headline numbers: ``{views: {method: test PSNR, ..., "dice": Dice}}``.

    Per view count, in :func:`method_order`: the test PSNR (dB, 2 decimals) of
    :data:`SUMMARY_BASELINES` (``fbp``, ``tv``) and of every learned model that is
    not an upper bound, then ``dice`` (3 decimals), the Dice of the first model with
    the predicted prior. Keys are the view count and the method names, so
    ``dvc metrics diff`` and ``dvc exp show`` line them up across runs.

    At most :data:`SUMMARY_LIMIT` numbers: view counts are taken from the sparsest
    up while their numbers fit, so the largest view counts are dropped first. Sparse
    views are where the methods differ most, and a sweep widened upwards (e.g.
    ``[30, 60, 120]``) keeps the columns of the default ``[30, 60]``. Should the
    sparsest view count alone have more numbers, its first ones in the order above
    are kept.
    """
    blocks: dict[str, dict[str, float]] = {}
    for views, per_view in sorted(merged.items(), key=lambda item: int(item[0])):
        block: dict[str, float] = {}
        dice = None
        for method in _methods(per_view, models):
            values = per_view[method]
            learned = _is_learned(method, values, models)
            if values.get("upper_bound") or not (learned or method in SUMMARY_BASELINES):
                continue
            block[method] = round(float(values["psnr"]), 2)
            if dice is None and values.get("prior") == "predicted" and "dice" in values:
                dice = round(float(values["dice"]), 3)
        if dice is not None:
            block["dice"] = dice
        if block:
            blocks[views] = block
    kept: dict[str, dict[str, float]] = {}
    count = 0
    for views, block in blocks.items():
        if count + len(block) > SUMMARY_LIMIT:
            if not kept:
                kept[views] = dict(list(block.items())[:SUMMARY_LIMIT])
            break
        kept[views] = block
        count += len(block)
    return kept


def write_report(report_dirs: dict[int, Path], out_dir: Path,
                 models: Sequence[str] = ()) -> Path:
    """Writes ``out_dir/metrics.json`` (everything), ``out_dir/summary.json`` (DVC
    metrics, see :func:`summary`), ``out_dir/plots/{psnr,ssim}.csv`` and
    ``out_dir/report.md``.

    ``models`` are the learned models' names in the order of the variant table; they
    order the methods in the tables and plots (see :func:`method_order`).
    """
    merged = {str(views): json.loads((Path(folder) / "metrics.json").read_text())
              for views, folder in sorted(report_dirs.items())}
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "metrics.json", merged)
    # in method order, as the tables read (dvc sorts its columns by name either way)
    atomic_write_bytes(out_dir / "summary.json",
                       (json.dumps(summary(merged, models), indent=2) + "\n").encode())
    write_plots(merged, out_dir / "plots", models)
    atomic_write_bytes(out_dir / "report.md", markdown(merged, models=models).encode())
    return out_dir
