"""The merged report: ``metrics.json``, CSVs for ``dvc plots`` and ``report.md``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from sparsect.data.store import atomic_write_bytes, atomic_write_json
from sparsect.notice import RESEARCH_NOTICE

ORDER = ("fbp", "sirt", "tv", "unet", "sg_unet", "sg_threshold", "sg_oracle")
REGION_NAMES = {"lung": "lung", "soft_tissue": "soft tissue", "bone": "bone", "body": "body"}


def _methods(per_view: dict) -> list[str]:
    names = [m for m in per_view if not m.startswith("_")]
    return sorted(names, key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m))


def _label(method: str, values: dict) -> str:
    return f"{method} (upper bound)" if values.get("upper_bound") else method


def _ci(values: dict, key: str, digits: int) -> str:
    mean = values[key]
    lo, hi = values.get("ci95", {}).get(key, (float("nan"), float("nan")))
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def write_plots(merged: dict, folder: Path) -> list[Path]:
    """``psnr.csv`` and ``ssim.csv``: one row per view count, one column per method."""
    written = []
    methods = sorted({m for per_view in merged.values() for m in _methods(per_view)},
                     key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m))
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


def markdown(merged: dict, figures: str = "views") -> str:
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
        for method in _methods(per_view):
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
        for method in _methods(per_view):
            regions = per_view[method].get("regions", {})
            cells = [f"{regions[r]['psnr']:.2f} / {regions[r]['rmse_hu']:.1f}" if r in regions
                     else "" for r in REGION_NAMES]
            lines.append(f"| {_label(method, per_view[method])} | " + " | ".join(cells) + " |")
        lines += ["", f"![{views} views]({figures}/{views}/panel.png)", "",
                  f"![{views} views residuals]({figures}/{views}/residuals.png)", ""]
    return "\n".join(lines)


def write_report(report_dirs: dict[int, Path], out_dir: Path) -> Path:
    """Writes ``out_dir/metrics.json``, ``out_dir/plots/{psnr,ssim}.csv``, ``out_dir/report.md``."""
    merged = {str(views): json.loads((Path(folder) / "metrics.json").read_text())
              for views, folder in sorted(report_dirs.items())}
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "metrics.json", merged)
    write_plots(merged, out_dir / "plots")
    atomic_write_bytes(out_dir / "report.md", markdown(merged).encode())
    return out_dir
