"""How the ellipses benchmark's scores are summarised and written up in ``report.md``.

:func:`summary` condenses per-image scores into what ``metrics.json`` records (mean,
bootstrap interval, count); :func:`report_markdown` renders those records as the table
that sets each method beside its published PSNR.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sparsect.evaluation.statistics import bootstrap_ci

METHOD_NAMES = {"fbp": "FBP", "tv": "TV", "unet": "FBP+U-Net", "lpd": "Learned Primal-Dual"}
"""Method key -> the name the paper and ``report.md`` give it."""


def summary(values: np.ndarray, resamples: int, seed: int = 0) -> dict[str, Any]:
    """Mean, 95 % percentile-bootstrap CI over images, and the count."""
    values = np.asarray(values, float)
    lo, hi = bootstrap_ci(values, resamples=resamples, seed=seed)
    return {"mean": float(np.mean(values)), "ci95": [lo, hi], "n": int(values.size)}


def report_markdown(metrics: dict[str, Any]) -> str:
    """``report.md`` for the records of ``metrics.json``: the score table beside the
    published PSNRs, the training budgets of the learned methods and the run time, so
    that a reader sees the comparison without opening the JSON."""
    data = metrics["data"]
    lines = [
        "# dival ellipses benchmark",
        "",
        f"Test split: the first {data['samples']['test']} test images (sampler "
        f"`{data['sampler']}`, seed {data['phantom_seeds']['test']}), {data['views']} views, "
        f"white noise {100 * data['noise']:g} % of the mean |observation|. PSNR as dival "
        "(per-image data range of the ground truth); 95 % bootstrap CI over images.",
        "",
        "| method | ours PSNR (dB) | 95 % CI | published | difference | SSIM | setting |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, result in metrics["methods"].items():
        p = result["psnr"]
        lines.append(
            f"| {METHOD_NAMES[key]} | {p['mean']:.2f} | {p['ci95'][0]:.2f}-{p['ci95'][1]:.2f} | "
            f"{result['published_psnr']:.2f} | {result['difference_db']:+.2f} | "
            f"{result['ssim']['mean']:.3f} | {_describe(key, result)} |"
        )
    lines += [
        "",
        "Published: Baguer, Leuschner & Schmidt, Inverse Problems 36 (2020) 094004 "
        "(32 000 training images; FBP and TV need none).",
        "",
    ]
    training = {k: v["training"] for k, v in metrics["methods"].items() if "training" in v}
    if training:
        lines.append("Training budgets (train split only; checkpoint chosen by validation PSNR):")
        lines.append("")
        for key, t in training.items():
            lines.append(
                f"- {METHOD_NAMES[key]}: {t['samples']} images, {t['epochs']} epochs "
                f"(best {t['best_epoch']}), batch {t['batch_size']}, "
                f"{t['seconds']:.0f} s wall-clock, {t['cpu_seconds']:.0f} s CPU"
            )
        lines.append("")
    timing = metrics["timing"]
    lines.append(
        f"Wall-clock: {timing['total_seconds']:.0f} s, CPU time "
        f"{timing['cpu_seconds']:.0f} s on {timing['cpu_threads']} threads."
    )
    return "\n".join(lines) + "\n"


def _describe(key: str, result: Mapping[str, Any]) -> str:
    """The chosen setting of one method in a few words, for its row of the table."""
    s = result["settings"]
    if key == "fbp":
        return f"{s['filter']}, frequency scaling {s['frequency_scaling']:.3g}"
    if key == "tv":
        return f"weight {s['weight']:g}, {s['iterations']} iterations"
    return f"{s['net']['_target_'].rsplit('.', 1)[-1]}, lr {s['lr']:g}"
