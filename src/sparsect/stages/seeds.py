"""``sparsect seeds``: two models compared over training seeds, paired by seed.

Each seed's models were trained on the same data and scored by ``evaluate`` on the
same test slices, so the difference ``a - b`` of one seed is a paired difference; the
spread over seeds is the spread of training (initialisation, data order), which a
single run hides. Reported per metric: each seed's values, their means and standard
deviations, the paired differences, their mean and a 95 % Student-t interval over
seeds (wide for three seeds, by design: it says how much three seeds can tell).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from sparsect.data.store import atomic_write_json, read_json
from sparsect.errors import InputError

METRICS = ("psnr", "ssim", "rmse_hu", "residual")


def compare_seeds(evaluations: Sequence[Path], seeds: Sequence[int], a: str, b: str,
                  out_path: Path) -> Path:
    """Writes ``out_path``: ``a`` against ``b`` over the ``metrics.json`` of
    ``evaluations`` (one folder per seed, in the order of ``seeds``).

    Raises:
        InputError: a folder without ``metrics.json``, or a model missing from one.
    """
    if len(evaluations) != len(seeds):
        raise InputError(f"{len(evaluations)} evaluation folders for {len(seeds)} seeds: give "
                         "one folder per seed.")
    per_seed = []
    for folder in evaluations:
        path = Path(folder) / "metrics.json"
        if not path.is_file():
            raise InputError(f"'{path}' does not exist: run `sparsect evaluate` for that seed.")
        metrics = read_json(path)
        for model in (a, b):
            if model not in metrics:
                raise InputError(f"'{path}' has no model '{model}': train and evaluate it with "
                                 "that seed.")
        per_seed.append(metrics)
    report: dict = {"a": a, "b": b, "seeds": [int(s) for s in seeds],
                    "split": per_seed[0].get("_settings", {}).get("split", "test")}
    for key in METRICS:
        values = {model: np.array([float(m[model][key]) for m in per_seed]) for model in (a, b)}
        diff = values[a] - values[b]
        report[key] = {
            **{model: {"per_seed": v.tolist(), "mean": float(v.mean()),
                       "sd": float(v.std(ddof=1)) if len(v) > 1 else math.nan}
               for model, v in values.items()},
            "difference": {"per_seed": diff.tolist(), "mean": float(diff.mean()),
                           "sd": float(diff.std(ddof=1)) if len(diff) > 1 else math.nan,
                           "ci95": _t_interval(diff)},
        }
    atomic_write_json(Path(out_path), report)
    return Path(out_path)


def _t_interval(values: np.ndarray) -> list[float]:
    if len(values) < 2:
        return [math.nan, math.nan]
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return [float(values.mean() - half), float(values.mean() + half)]
