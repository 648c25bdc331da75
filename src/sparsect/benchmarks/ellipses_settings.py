"""The ``ellipses`` config section of dival's ellipses benchmark, read and checked.

:func:`settings` turns the section (plain or OmegaConf, see
``conf/experiment/ellipses.yaml``) into an :class:`EllipsesSettings`, so that a bad value
stops the run before any data are made, with an :class:`~sparsect.errors.InputError`
naming its key. The constants here are dival's reference values that the section
defaults to or is checked against; the benchmark itself is described in
:mod:`sparsect.benchmarks.ellipses`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparsect.errors import InputError

PUBLISHED_PSNR = {"fbp": 24.18, "tv": 27.96, "unet": 29.36, "lpd": 32.27}
"""Test PSNR (dB) of Baguer, Leuschner & Schmidt (2020) on the ellipses data set."""

SPLITS = ("train", "validation", "test")
SAMPLERS = ("dival", "generator")

DIVAL_PHANTOM_SEEDS = {"train": 42, "validation": 2, "test": 1}
"""``EllipsesDataset(fixed_seeds=True)``."""
DIVAL_NOISE_SEEDS = {"train": 1, "validation": 2, "test": 3}
"""``create_pair_dataset(noise_seeds=...)`` in ``get_standard_dataset('ellipses')``."""
DIVAL_SAMPLES = {"train": 32000, "validation": 3200, "test": 3200}

FBP_FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")
"""The windows of ``odl.tomo.fbp_op`` (names in lower case)."""


@dataclass(frozen=True)
class TrainingSettings:
    """Budget and network of one learned method."""

    epochs: int
    batch_size: int
    lr: float
    net: dict[str, Any]
    fbp_filter: str = "hann"
    fbp_frequency_scaling: float = 1.0
    train_samples: int | None = None  # the first this many of the train split; None: all


@dataclass(frozen=True)
class EllipsesSettings:
    """The ``ellipses`` config section, checked (see ``conf/experiment/ellipses.yaml``)."""

    samples: dict[str, int]
    phantom_seeds: dict[str, int]
    noise_seeds: dict[str, int]
    sampler: str = "dival"
    noise: float = 0.025
    image_size: int = 128
    sim_size: int = 400
    views: int = 30
    methods: tuple[str, ...] = ("fbp", "tv", "unet", "lpd")
    fbp_grid: dict[str, list] = field(default_factory=dict)
    tv_grid: dict[str, list] = field(default_factory=dict)
    tv_nonnegative: bool = False
    tv_batch: int = 100
    unet: TrainingSettings | None = None
    lpd: TrainingSettings | None = None
    seed: int = 0
    bootstrap_resamples: int = 2000


def _fail(key: str, problem: str, fix: str) -> None:
    raise InputError(f"ellipses.{key} {problem}: {fix}.")


def _mapping(section: Any, key: str) -> dict[str, Any]:
    if section is None:
        _fail(key, "is missing", "add it (see conf/experiment/ellipses.yaml)")
    if not isinstance(section, Mapping):
        _fail(
            key,
            f"must be a mapping, got {section!r}",
            "write it as a YAML mapping as in conf/experiment/ellipses.yaml",
        )
    return dict(section)


def _int(value: Any, key: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        _fail(key, f"must be an integer >= {minimum}, got {value!r}", "set a whole number")
    return int(value)


def _real(
    value: Any, key: str, low: float = 0.0, high: float = math.inf, low_open: bool = True
) -> float:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float | np.floating)
        and math.isfinite(float(value))
        and (float(value) > low if low_open else float(value) >= low)
        and float(value) <= high
    )
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}"
        bound += "" if high == math.inf else f" and <= {high}"
        _fail(key, f"must be a number {bound}, got {value!r}", "set a number in that range")
    return float(value)


def _list(value: Any, key: str) -> list:
    if isinstance(value, str) or not isinstance(value, Iterable) or not list(value):
        _fail(key, f"must be a non-empty list, got {value!r}", "write it as [a, b, ...]")
    return list(value)


def _splits(section: Any, key: str, minimum: int) -> dict[str, int]:
    values = _mapping(section, key)
    unknown = sorted(set(values) - set(SPLITS))
    if unknown:
        _fail(key, f"has unknown splits {unknown}", f"use only {list(SPLITS)}")
    missing = [split for split in SPLITS if split not in values]
    if missing:
        _fail(key, f"lacks {missing}", f"give a value for each of {list(SPLITS)}")
    return {split: _int(values[split], f"{key}.{split}", minimum) for split in SPLITS}


def _training(section: Any, key: str, image_size: int, train_count: int) -> TrainingSettings:
    values = _mapping(section, key)
    known = {
        "epochs",
        "batch_size",
        "lr",
        "net",
        "fbp_filter",
        "fbp_frequency_scaling",
        "train_samples",
    }
    unknown = sorted(set(values) - known)
    if unknown:
        _fail(
            f"{key}.{unknown[0]}",
            "is not a training setting",
            f"remove it or use one of {sorted(known)}",
        )
    train_samples = values.get("train_samples")
    if train_samples is not None:
        train_samples = _int(train_samples, f"{key}.train_samples", 1)
        if train_samples > train_count:
            _fail(
                f"{key}.train_samples",
                f"({train_samples}) exceeds samples.train ({train_count})",
                "lower it or raise ellipses.samples.train",
            )
    net = _mapping(values.get("net"), f"{key}.net")
    if "_target_" not in net:
        _fail(
            f"{key}.net", "lacks _target_", "name the network class, e.g. sparsect.models.unet.UNet"
        )
    if key == "unet":
        depth = _int(net.get("depth", 4), f"{key}.net.depth", 1)
        if image_size % 2 ** (depth - 1):
            _fail(
                f"{key}.net.depth",
                f"({depth}) does not divide the {image_size}-pixel image into whole levels",
                "lower the depth",
            )
    fbp_filter = values.get("fbp_filter", "hann")
    if fbp_filter not in FBP_FILTERS:
        _fail(f"{key}.fbp_filter", f"is {fbp_filter!r}", f"choose one of {list(FBP_FILTERS)}")
    return TrainingSettings(
        epochs=_int(values.get("epochs"), f"{key}.epochs", 1),
        batch_size=_int(values.get("batch_size"), f"{key}.batch_size", 1),
        lr=_real(values.get("lr"), f"{key}.lr"),
        net=net,
        fbp_filter=str(fbp_filter),
        fbp_frequency_scaling=_real(
            values.get("fbp_frequency_scaling", 1.0), f"{key}.fbp_frequency_scaling", 0.0, 1.0
        ),
        train_samples=train_samples,
    )


def settings(cfg: Mapping[str, Any]) -> EllipsesSettings:
    """Reads and checks the ``ellipses`` section of ``cfg`` (the whole config, or the
    section itself, plain or OmegaConf); a bad value raises :class:`InputError` naming
    its key."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping):
        raise InputError(
            "The ellipses benchmark needs a config mapping: pass the composed "
            "config with experiment=ellipses."
        )
    if "ellipses" in cfg:
        section = _mapping(cfg["ellipses"], "")
    elif "samples" in cfg:
        section = dict(cfg)
    else:
        raise InputError(
            "The config has no 'ellipses' section: compose it with "
            "experiment=ellipses (conf/experiment/ellipses.yaml)."
        )
    known = {
        "samples",
        "phantom_seeds",
        "noise_seeds",
        "sampler",
        "noise",
        "image_size",
        "sim_size",
        "views",
        "methods",
        "fbp",
        "tv",
        "unet",
        "lpd",
        "seed",
        "bootstrap_resamples",
    }
    unknown = sorted(set(section) - known)
    if unknown:
        _fail(
            str(unknown[0]),
            "is not a setting of the benchmark",
            f"remove it or use one of {sorted(known)}",
        )
    samples = _splits(section.get("samples"), "samples", 0)
    if samples["validation"] < 1 or samples["test"] < 1:
        _fail("samples", f"has {samples}", "give at least one validation and one test sample")
    sampler = section.get("sampler", "dival")
    if sampler not in SAMPLERS:
        _fail("sampler", f"is {sampler!r}", f"choose one of {list(SAMPLERS)}")
    image_size = _int(section.get("image_size", 128), "image_size", 8)
    sim_size = _int(section.get("sim_size", 400), "sim_size", 8)
    if sim_size < image_size:
        _fail(
            "sim_size",
            f"({sim_size}) is below image_size ({image_size})",
            "simulate on a finer grid than the reconstruction (dival: 400 for 128)",
        )
    methods = tuple(_list(section.get("methods", list(PUBLISHED_PSNR)), "methods"))
    for method in methods:
        if method not in PUBLISHED_PSNR:
            _fail("methods", f"has {method!r}", f"choose from {list(PUBLISHED_PSNR)}")
    fbp = _mapping(section.get("fbp"), "fbp")
    fbp_grid = {
        "filter": _list(fbp.get("filter"), "fbp.filter"),
        "frequency_scaling": _list(fbp.get("frequency_scaling"), "fbp.frequency_scaling"),
    }
    for name in fbp_grid["filter"]:
        if name not in FBP_FILTERS:
            _fail("fbp.filter", f"has {name!r}", f"choose from {list(FBP_FILTERS)}")
    fbp_grid["frequency_scaling"] = [
        _real(v, "fbp.frequency_scaling", 0.0, 1.0) for v in fbp_grid["frequency_scaling"]
    ]
    tv_grid: dict[str, list] = {}
    tv_nonnegative, tv_batch = False, 100
    if "tv" in methods:
        tv = _mapping(section.get("tv"), "tv")
        tv_grid = {
            "weight": [_real(v, "tv.weight") for v in _list(tv.get("weight"), "tv.weight")],
            "iterations": [
                _int(v, "tv.iterations", 1) for v in _list(tv.get("iterations"), "tv.iterations")
            ],
        }
        tv_nonnegative = tv.get("nonnegative", False)
        if not isinstance(tv_nonnegative, bool):
            _fail("tv.nonnegative", f"is {tv_nonnegative!r}", "set true or false")
        tv_batch = _int(tv.get("batch", 100), "tv.batch", 1)
    learned = {}
    for name in ("unet", "lpd"):
        if name in methods:
            if samples["train"] < 1:
                _fail(
                    "samples.train",
                    "is 0",
                    f"give training samples for {name}, or remove {name} from ellipses.methods",
                )
            learned[name] = _training(section.get(name), name, image_size, samples["train"])
    return EllipsesSettings(
        samples=samples,
        phantom_seeds=_splits(
            section.get("phantom_seeds", DIVAL_PHANTOM_SEEDS), "phantom_seeds", 0
        ),
        noise_seeds=_splits(section.get("noise_seeds", DIVAL_NOISE_SEEDS), "noise_seeds", 0),
        sampler=sampler,
        noise=_real(section.get("noise", 0.025), "noise", 0.0, 10.0, low_open=False),
        image_size=image_size,
        sim_size=sim_size,
        views=_int(section.get("views", 30), "views", 1),
        methods=methods,
        fbp_grid=fbp_grid,
        tv_grid=tv_grid,
        tv_nonnegative=tv_nonnegative,
        tv_batch=tv_batch,
        unet=learned.get("unet"),
        lpd=learned.get("lpd"),
        seed=_int(section.get("seed", 0), "seed", 0),
        bootstrap_resamples=_int(
            section.get("bootstrap_resamples", 2000), "bootstrap_resamples", 1
        ),
    )
