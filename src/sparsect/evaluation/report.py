"""The merged report: ``metrics.json``, ``summary.json``, CSVs for ``dvc plots``, ``report.md``.

``metrics.json`` holds every number (per subject, per region, confidence
intervals); ``summary.json`` holds the few headline numbers that ``dvc metrics
show``/``diff`` and ``dvc exp show`` compare (see :func:`summary`).

Methods are listed in one order everywhere: the classical reconstructions
(:data:`CLASSICAL`), then the learned models in the order of the variant table
(the ``models`` argument), each followed by its data-consistent form (``<model>+dc``),
then anything else alphabetically.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from sparsect.data.store import atomic_write_bytes, atomic_write_json
from sparsect.evaluation.followup_report import followup_markdown
from sparsect.methods.names import DC_SUFFIX
from sparsect.notice import RESEARCH_NOTICE

CLASSICAL = ("fbp", "sirt", "tv")
REGION_NAMES = {"lung": "lung", "soft_tissue": "soft tissue", "bone": "bone", "body": "body"}

SUMMARY_BASELINES = ("fbp", "tv")
"""Classical methods in ``summary.json``: FBP and the strongest classical baseline."""
SUMMARY_LIMIT = 12
"""At most this many numbers in ``summary.json``."""


def method_order(names: Iterable[str], models: Sequence[str] = ()) -> list[str]:
    """``names`` sorted: :data:`CLASSICAL` first, then ``models`` in their order (each
    followed by its ``+dc`` form), then the rest alphabetically.

    >>> method_order(["sg_unet+dc", "tv", "unet", "sg_unet", "fbp"], ["unet", "sg_unet"])
    ['fbp', 'tv', 'unet', 'sg_unet', 'sg_unet+dc']
    """
    ranked = [*CLASSICAL, *(m for m in models if m not in CLASSICAL)]

    def key(method: str) -> tuple:
        base = method.removesuffix(DC_SUFFIX)
        return (ranked.index(base) if base in ranked else len(ranked), base, method != base)

    return sorted(names, key=key)


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
        lines += baselines_markdown(per_view.get("_baselines"))
        lines += ["", "Per region (full-dose masks): PSNR (dB) / RMSE (HU)", "",
                  "| method | " + " | ".join(REGION_NAMES.values()) + " |",
                  "|---|" + "---|" * len(REGION_NAMES)]
        for method in _methods(per_view, models):
            regions = per_view[method].get("regions", {})
            cells = [f"{regions[r]['psnr']:.2f} / {regions[r]['rmse_hu']:.1f}" if r in regions
                     else "" for r in REGION_NAMES]
            lines.append(f"| {_label(method, per_view[method])} | " + " | ".join(cells) + " |")
        lines += task_markdown(per_view, models)
        lines += ["", f"![{views} views]({figures}/{views}/panel.png)", "",
                  f"![{views} views residuals]({figures}/{views}/residuals.png)", ""]
    return "\n".join(lines)


def _interval(mean: float, ci: list | tuple, digits: int) -> str:
    return f"{mean:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def task_markdown(per_view: dict, models: Sequence[str] = ()) -> list[str]:
    """The task study's table at one view count (:mod:`sparsect.stages.study`): lesion
    contrast recovery, CNR, the observer's d' and AUC, downstream Dice, invented and lost
    structures, each with its 95% CI over cohort subjects."""
    setting = per_view.get("_task_study")
    if not setting:
        return []
    lines = ["", f"Task study ({setting['set']} of the cohort: {setting['subjects']} "
                 f"lesion-free subjects of their own seed, {setting['lesions']} lesions "
                 f"{setting['lesions_by_host']}, {setting['realisations']} noise "
                 "realisations each; CHO with "
                 f"{setting['observer']['channels']} Laguerre-Gauss channels of width "
                 f"{setting['observer']['channel_width_mm']:.0f} mm, template from "
                 f"{setting['observer']['train']}, scored on {setting['observer']['test']}; "
                 "structures: regions of |x - reference| above "
                 f"{setting['structure_threshold_hu']:.0f} HU (3 SD of a "
                 f"{setting['full_views']}-view full-dose FBP's noise) of >= 5 pixels). "
                 "Brackets: 95% bootstrap CI over subjects.", "",
             "| method | abs(CR - 1) | CNR | d' | AUC | downstream Dice | HD95 (mm) | "
             "invented / slice | lost / slice |", "|---|---|---|---|---|---|---|---|---|"]
    for method in _methods(per_view, models):
        v = per_view[method]
        if "detectability" not in v:
            continue
        cr, det = v["lesion_contrast_recovery"], v["detectability"]
        dice = v.get("downstream_dice")
        hd95 = dice and [x for x in dice["hd95_mm"].values() if x == x]
        lines.append(
            f"| {_label(method, v)} | {_interval(cr['abs_cr_minus_1'], cr['ci95'], 3)} | "
            f"{_interval(v['lesion_cnr']['mean'], v['lesion_cnr']['ci95'], 2)} | "
            f"{_interval(det['d_prime'], det['d_prime_ci95'], 2)} | "
            f"{_interval(det['auc'], det['auc_ci95'], 3)} | "
            + (f"{_interval(dice['mean'], dice['ci95'], 3)} | "
               f"{sum(hd95) / len(hd95):.1f} | " if dice else "| | ")
            + f"{_interval(v['hallucinated']['per_slice'], v['hallucinated']['ci95'], 1)} | "
            f"{_interval(v['lost']['per_slice'], v['lost']['ci95'], 1)} |")
    reference = per_view.get("_task_reference", {}).get("downstream_dice")
    if reference:
        lines.append(f"| full-dose reference (segmenter's ceiling) | | | | | "
                     f"{_interval(reference['mean'], reference['ci95'], 3)} | | | |")
    return lines


def _setting(options: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(options.items())) or "-"


def _values(grid: dict) -> str:
    return "; ".join(f"{key} {', '.join(str(v) for v in values)}"
                     for key, values in sorted(grid.items()))


def baselines_markdown(record: dict | None) -> list[str]:
    """The settings each classical baseline used at one view count: chosen on the
    validation split from the values tried, beside the untuned defaults."""
    if not record:
        return []
    tuning = record.get("tuning") or {}
    tuned = tuning.get("methods", {})
    lines = ["", f"Classical baselines' settings, chosen by mean PSNR on "
                 f"{tuning.get('slices', '?')} validation slices (never the test split):", "",
             "| method | setting used | val PSNR (dB) | untuned setting | val PSNR (dB) "
             "| values tried |", "|---|---|---|---|---|---|"]
    for method in method_order(record.get("methods", {})):
        used = record["methods"][method]
        default = (record.get("defaults") or {}).get(method, used)
        if method in tuned:
            result = tuned[method]
            lines.append(f"| {method} | {_setting(used)} | {result['psnr']:.2f} | "
                         f"{_setting(default)} | {result['default_psnr']:.2f} | "
                         f"{_values(result['grid'])} ({len(result['trials'])} settings, "
                         "the untuned one included) |")
        else:
            lines.append(f"| {method} | {_setting(used)} | | {_setting(default)} | | "
                         "not tuned |")
    return lines


def external_markdown(external: dict, merged: dict, models: Sequence[str] = ()) -> list[str]:
    """The real-scan section of ``report.md``: per view count, each method's PSNR inside the
    body and over the whole image on each scan, their mean, and its gain over FBP beside
    the test split's (the gap says how much of a method's advantage transfers)."""
    if not external:
        return []
    lines = ["## Real scans (external validation)", "",
             "Real clinical CT kept in `realct/` (never trained on), simulated and scored as "
             "the test split (same geometry, noise, window and data range). Cells: PSNR (dB) "
             "inside the body of the reference / over the whole image. A real reference is "
             "itself a noisy image: its noise (standard deviation in uniform soft-tissue "
             "squares of 5 x 5 pixels) caps every PSNR and penalises denoising, so it is "
             "stated per scan. Gain: PSNR over FBP's, real scans (body, mean over scans) "
             "against the test split (whole image).", ""]
    for views, per_view in sorted(external.items(), key=lambda item: int(item[0])):
        scans = sorted(name for name in per_view if not name.startswith("_"))
        test = merged.get(views, {})
        methods = method_order({m for scan in scans for m in per_view[scan]
                                if not m.startswith("_")}, models)
        lines += [f"### {views} views", "",
                  "| method | " + " | ".join(scans) + " | mean body | gain, real | "
                  "gain, test split | test split PSNR |",
                  "|---|" + "---|" * (len(scans) + 4),
                  "| reference noise (HU) | " + " | ".join(
                      f"{per_view[s]['_reference']['noise_sd_hu']:.1f}" for s in scans)
                  + " | | | | |"]
        fbp_body = sum(per_view[s]["fbp"]["psnr_body"] for s in scans) / len(scans)
        for method in methods:
            cells = [f"{per_view[s][method]['psnr_body']:.2f} / {per_view[s][method]['psnr']:.2f}"
                     if method in per_view[s] else "" for s in scans]
            present = [per_view[s][method]["psnr_body"] for s in scans if method in per_view[s]]
            mean = sum(present) / len(present)
            in_test = test.get(method)
            test_gain = (f"{in_test['psnr'] - test['fbp']['psnr']:+.2f}"
                         if in_test and "fbp" in test else "")
            test_psnr = f"{in_test['psnr']:.2f}" if in_test else ""
            label = _label(method, next(per_view[s][method] for s in scans
                                        if method in per_view[s]))
            lines.append(f"| {label} | " + " | ".join(cells)
                         + f" | {mean:.2f} | {mean - fbp_body:+.2f} | {test_gain} | "
                         f"{test_psnr} |")
        lines += ["", " ".join(f"![{s}, {views} views](external/{views}/{s}/panel.png)"
                               for s in scans), ""]
    return lines


def _is_learned(method: str, values: dict, models: Sequence[str]) -> bool:
    """A trained model: named in ``models``, or evaluated with a prior (classical methods
    have none)."""
    return method in models or "prior" in values


def summary(merged: dict, models: Sequence[str] = ()) -> dict[str, dict[str, float]]:
    """The headline numbers: ``{views: {method: test PSNR, ..., "dice": Dice}}``.

    Per view count, in :func:`method_order`: the test PSNR (dB, 2 decimals) of
    :data:`SUMMARY_BASELINES` (``fbp``, ``tv``) and of every learned model that is
    not an upper bound (not their ``+dc`` forms, which ``metrics.json`` and the report
    hold), then ``dice`` (3 decimals), the Dice of the first model with
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
            if values.get("upper_bound") or method.endswith(DC_SUFFIX) \
                    or not (learned or method in SUMMARY_BASELINES):
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
                 models: Sequence[str] = (), external_dirs: dict[int, Path] | None = None,
                 followup_dirs: dict[int, Path] | None = None) -> Path:
    """Writes ``out_dir/metrics.json`` (everything), ``out_dir/summary.json`` (DVC
    metrics, see :func:`summary`), ``out_dir/plots/{psnr,ssim}.csv`` and
    ``out_dir/report.md``.

    ``models`` are the learned models' names in the order of the variant table; they
    order the methods in the tables and plots (see :func:`method_order`).
    ``external_dirs`` (view count -> folder of ``sparsect external``) go into
    ``metrics.json`` under ``"external"`` and into their own section of ``report.md``;
    so do ``followup_dirs`` (``sparsect followup``), under ``"followup"``.
    """
    merged = {str(views): json.loads((Path(folder) / "metrics.json").read_text())
              for views, folder in sorted(report_dirs.items())}
    external = {str(views): json.loads((Path(folder) / "metrics.json").read_text())
                for views, folder in sorted((external_dirs or {}).items())}
    followup = {str(views): json.loads((Path(folder) / "metrics.json").read_text())
                for views, folder in sorted((followup_dirs or {}).items())}
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "metrics.json", {**merged, **({"external": external}
                                                              if external else {}),
                                                 **({"followup": followup} if followup else {})})
    # in method order, as the tables read (dvc sorts its columns by name either way)
    atomic_write_bytes(out_dir / "summary.json",
                       (json.dumps(summary(merged, models), indent=2) + "\n").encode())
    write_plots(merged, out_dir / "plots", models)
    text = "\n".join([markdown(merged, models=models), *external_markdown(external, merged,
                                                                          models),
                      *followup_markdown(followup)])
    atomic_write_bytes(out_dir / "report.md", text.encode())
    return out_dir
