"""The methods of a run at one view count: FBP, the classical baselines with the settings
``baselines@<views>`` chose on validation, and every trained model with its ``+dc`` form."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sparsect.data.store import atomic_dir, read_json, save_array
from sparsect.errors import InputError
from sparsect.models.checkpoint import load_module
from sparsect.models.variants import known_variant, variant_table
from sparsect.physics.reconstruct import DEFAULT_MAX_MIB

from .case import Case, Output
from .classical import Classical
from .learned import Learned

Method = Classical | Learned


def tuned_settings(baselines_dir: Path, views: int) -> dict[str, dict[str, Any]]:
    """The classical methods and the settings ``baselines@<views>`` chose for them.

    Raises:
        InputError: the folder holds the baselines of another view count.
    """
    settings = read_json(Path(baselines_dir) / "settings.json")
    if int(settings["geometry"]["views"]) != int(views):
        raise InputError(f"{baselines_dir} holds the baselines of "
                         f"{settings['geometry']['views']} views, not {views}: pass "
                         f"--baselines of the same view count.")
    return settings["methods"]


def classical_methods(cfg: Any, settings: dict[str, dict[str, Any]],
                      names: Sequence[str] | None = None,
                      workers: int | None = None) -> list[Classical]:
    """``fbp`` (the case's own), then the tuned methods of ``settings`` (all, or those of
    ``names`` in its order; a tuned ``fbp`` replaces the case's)."""
    run = {"max_mib": float(cfg.physics.get("operator_max_mib") or DEFAULT_MAX_MIB),
           "workers": int(workers or 1)}
    names = list(settings) if names is None else [n for n in names if n in settings]
    return [Classical("fbp"), *(Classical(name, dict(settings[name]), **run) for name in names)]


def learned_methods(cfg: Any, models_dir: Path) -> list[Learned]:
    """Every model of ``models_dir/summary.json``, in its order, each with its ``+dc`` form
    where its checkpoint records the step; the report's labels come from the variant
    table."""
    table = variant_table(cfg)
    methods = []
    for name, info in read_json(Path(models_dir) / "summary.json").items():
        variant = known_variant(table, name)
        module = load_module(Path(models_dir) / info["checkpoint"])
        methods.append(Learned(name, module, data_consistency=bool(module.hparams.get("dc")),
                               label={"prior": variant.prior,
                                      "upper_bound": variant.upper_bound}))
    return methods


def load_methods(cfg: Any, views: int, models_dir: Path | None = None,
                 baselines_dir: Path | None = None, classical: Sequence[str] | None = None,
                 workers: int | None = None) -> list[Method]:
    """Every method of a run at ``views``, in the order the reports list them.

    Args:
        cfg: The pipeline's config (variant table, physics settings).
        views: The view count; the baselines must be of it.
        models_dir: A ``train@<views>`` output (None: no learned method).
        baselines_dir: A ``baselines@<views>`` output (None: FBP only).
        classical: Keep only these classical methods, in this order (None: all).
        workers: Processes for a classical method's slice-by-slice fallback.
    """
    settings = tuned_settings(baselines_dir, views) if baselines_dir is not None else {}
    methods: list[Method] = list(classical_methods(cfg, settings, classical, workers))
    if models_dir is not None:
        methods.extend(learned_methods(cfg, models_dir))
    return methods


def run_methods(methods: Sequence[Method], case: Case) -> dict[str, Output]:
    """Every method's outputs on ``case``, by name, in the methods' order (a later method of
    the same name, such as a tuned ``fbp``, replaces an earlier one in its place)."""
    outputs: dict[str, Output] = {}
    for method in methods:
        outputs.update(method.apply(case))
    return outputs


def write_images(folder: Path, images: dict[str, np.ndarray]) -> Path:
    """Writes every method's images as ``folder/<method>.npy`` (float32 HU), replacing the
    folder atomically: the reconstructions an evaluation scored, for a reader to inspect."""
    with atomic_dir(Path(folder)) as tmp:
        for name, array in images.items():
            save_array(tmp, name, np.asarray(array, np.float32))
    return Path(folder)
