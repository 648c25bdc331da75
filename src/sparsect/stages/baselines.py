"""Stage ``baselines@<views>``: classical reconstructions, tuned on validation, run on test.

FBP, SIRT and TV (and CGLS or SART when configured) run on the measured sparse
sinograms with the acquisition's own operator on the reconstruction grid; the
learned models are judged against them. A learned model beating an untuned TV
proves little, so each method's settings are chosen here, per view count and
geometry, on the **validation** split: every combination of ``tuning.grid`` (the
FBP filter, SIRT's iteration count, TV's weight and iteration count) is scored
by the mean PSNR of ``evaluate``'s window, and the highest-scoring one then
reconstructs the held-out split. ``settings.json`` records the values tried,
their validation numbers, the choice and the untuned defaults (``baselines``),
which the report shows.

Separate from ``evaluate`` so that retraining a network does not recompute them.
SIRT, CGLS and TV run batched on the torch sparse operator
(:func:`~sparsect.physics.reconstruct.reconstruct_record`): a grid over
iteration counts costs one run to the largest count.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sparsect.data.store import atomic_dir, atomic_write_json, load_array, read_json, save_array
from sparsect.errors import InputError
from sparsect.evaluation.metrics import psnr_hu, ssim_hu
from sparsect.methods.case import Case
from sparsect.methods.classical import Classical
from sparsect.physics import Geometry, mu_to_hu
from sparsect.physics.acquisition import Acquisition
from sparsect.physics.reconstruct import (
    DEFAULT_MAX_MIB,
    check_options,
    method_defaults,
    reconstruct_record,
    reconstruct_stack,
)


def _options(cfg: DictConfig, key: str) -> dict[str, Any]:
    section = cfg.get(key)
    return {} if section is None else OmegaConf.to_container(section, resolve=True)


def baseline_settings(cfg: DictConfig) -> tuple[dict[str, dict], dict[str, dict[str, list]]]:
    """The untuned settings (``baselines``: method -> options) and the grids
    (``tuning.grid``: method -> option -> values), checked; bad ones raise
    :class:`InputError` naming the key."""
    defaults = {name: dict(options or {}) for name, options in _options(cfg, "baselines").items()}
    grids = _options(cfg, "tuning").get("grid") or {}
    for name, options in defaults.items():
        try:
            check_options(name, options)
        except ValueError as error:
            raise InputError(f"baselines.{name}: {error}") from None
    for name, grid in grids.items():
        if name not in defaults:
            raise InputError(f"tuning.grid.{name} tunes a method that baselines does not run; "
                             f"add baselines.{name} or remove tuning.grid.{name}.")
        for option, values in (grid or {}).items():
            if not isinstance(values, list) or not values:
                raise InputError(f"tuning.grid.{name}.{option} must be a non-empty list of "
                                 f"values, got {values!r}.")
        try:
            check_options(name, dict.fromkeys(grid or {}))
        except ValueError as error:
            raise InputError(f"tuning.grid.{name}: {error}") from None
    return defaults, {name: dict(grid or {}) for name, grid in grids.items()}


def _trials(method: str, default: dict, grid: dict[str, list]) -> list[tuple[dict, list[int]]]:
    """The grid as runs: (options without ``iterations``, iteration counts to record).

    The untuned default is always among the settings tried."""
    keys = sorted(grid)
    combos = [dict(zip(keys, values, strict=True))
              for values in itertools.product(*(grid[k] for k in keys))]
    settings = [{**default, **combo} for combo in combos] or [dict(default)]
    if default not in settings:
        settings.append(dict(default))
    if "iterations" not in method_defaults(method):
        return [(options, []) for options in settings]
    runs: dict[tuple, tuple[dict, set[int]]] = {}
    for options in settings:
        fixed = {k: v for k, v in options.items() if k != "iterations"}
        count = int(options.get("iterations", method_defaults(method)["iterations"]))
        runs.setdefault(tuple(sorted(fixed.items())), (fixed, set()))[1].add(count)
    return [(fixed, sorted(counts)) for fixed, counts in runs.values()]


def _scores(mu: np.ndarray, reference_hu: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    pred = torch.from_numpy(mu_to_hu(mu))
    target = torch.from_numpy(reference_hu)
    return (float(psnr_hu(pred, target, lo, hi).mean()),
            float(ssim_hu(pred, target, lo, hi).mean()))


def tune(method: str, default: dict, grid: dict[str, list], geometry: Geometry,
         sinograms: np.ndarray, reference_hu: np.ndarray, lo: float, hi: float,
         **run: Any) -> dict[str, Any]:
    """Scores every setting of ``grid`` (over ``default``) on validation slices.

    Returns:
        ``{"grid", "trials": [{"options", "psnr", "ssim"}], "chosen", "psnr", "ssim",
        "default", "default_psnr"}``: the chosen setting has the highest mean PSNR.
    """
    trials = []
    for fixed, counts in _trials(method, default, grid):
        if counts:
            results = reconstruct_record(method, geometry, sinograms, counts, **run, **fixed)
            for count, mu in results.items():
                psnr, ssim = _scores(mu, reference_hu, lo, hi)
                trials.append({"options": {**fixed, "iterations": count},
                               "psnr": psnr, "ssim": ssim})
        else:
            mu = reconstruct_stack(method, geometry, sinograms, **run, **fixed)
            psnr, ssim = _scores(mu, reference_hu, lo, hi)
            trials.append({"options": fixed, "psnr": psnr, "ssim": ssim})
    best = max(trials, key=lambda trial: trial["psnr"])
    untuned = next(t for t in trials if _same(t["options"], default, method))
    return {"grid": grid, "trials": trials, "chosen": best["options"], "psnr": best["psnr"],
            "ssim": best["ssim"], "default": default, "default_psnr": untuned["psnr"]}


def _same(options: dict, default: dict, method: str) -> bool:
    full = {**method_defaults(method), **default}
    return all(full.get(k) == v for k, v in options.items())


def _picks(count: int, max_slices: int | None) -> np.ndarray:
    if not max_slices or max_slices >= count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, int(max_slices)).round().astype(int))


def baselines(cfg: DictConfig, sim_dir: Path, out_dir: Path, prepared_dir: Path | None = None,
              workers: int | None = None, split: str = "test") -> Path:
    """Writes ``out_dir/<method>.npy`` (``(N, H, W)`` HU) for each method in ``cfg.baselines``
    and ``settings.json``, with each method's settings tuned on the validation split
    of ``prepared_dir`` / ``sim_dir`` when ``tuning.grid`` has a grid for it (the
    defaults otherwise, or when ``prepared_dir`` is None)."""
    defaults, grids = baseline_settings(cfg)
    header = read_json(Path(sim_dir) / "geometry.json")
    geometry = Geometry.from_dict(header["geometry"])
    workers = workers or cfg.physics.get("workers") or os.cpu_count() or 1
    run = {"device": str(cfg.physics.device), "workers": int(workers),
           "max_mib": float(cfg.physics.get("operator_max_mib") or DEFAULT_MAX_MIB)}
    lo, hi = float(cfg.evaluate.hu_min), float(cfg.evaluate.hu_max)
    tuning: dict[str, Any] = {}
    chosen = dict(defaults)
    if prepared_dir is not None and grids:
        sinograms = np.asarray(load_array(Path(sim_dir) / "val", "sinogram"))
        reference = np.asarray(load_array(Path(prepared_dir) / "val", "hu"))
        if len(sinograms) != len(reference):
            raise InputError(f"{sim_dir}/val holds {len(sinograms)} sinograms but "
                             f"{prepared_dir}/val {len(reference)} slices: rerun simulate.")
        picks = _picks(len(sinograms), _options(cfg, "tuning").get("max_slices"))
        tuning = {"split": "val", "slices": int(len(picks)), "metric": "mean PSNR",
                  "hu_window": [lo, hi], "methods": {}}
        for method, grid in grids.items():
            start = time.perf_counter()
            result = tune(method, defaults[method], grid, geometry, sinograms[picks],
                          np.ascontiguousarray(reference[picks], np.float32), lo, hi, **run)
            tuning["methods"][method] = result
            chosen[method] = result["chosen"]
            print(f"[baselines] {geometry.views} views, {method}: {result['chosen']} "
                  f"(val PSNR {result['psnr']:.2f} dB, untuned {result['default_psnr']:.2f}; "
                  f"{len(result['trials'])} settings, {time.perf_counter() - start:.0f} s)",
                  file=sys.stderr)
    case = Case(load_array(Path(sim_dir) / split, "fbp"),
                np.asarray(load_array(Path(sim_dir) / split, "sinogram")),
                Acquisition.from_record(header["geometry"], header["noise"], header,
                                        int(cfg.seed), run["device"]))
    with atomic_dir(Path(out_dir)) as tmp:
        for method, options in chosen.items():
            classical = Classical(method, dict(options), run["max_mib"], run["workers"])
            save_array(tmp, method, classical.apply(case)[method].images)
        atomic_write_json(tmp / "settings.json", {
            "split": split, "methods": chosen, "defaults": defaults, "tuning": tuning,
            "geometry": header["geometry"]})
    return Path(out_dir)
