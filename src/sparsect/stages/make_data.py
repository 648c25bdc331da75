"""``sparsect make-data``: the built-in phantom scans, written as NIfTI (``cfg.data.phantom``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sparsect.data.phantom import PhantomConfig, write_dataset
from sparsect.errors import InputError

DATASET_KEYS = ("subjects", "seed")
"""Keys of ``data.phantom`` that describe the data set; every other key is a
:class:`PhantomConfig` field (unset fields keep their defaults)."""


def phantom_config(phantom: DictConfig) -> PhantomConfig:
    """``data.phantom`` minus :data:`DATASET_KEYS` as a :class:`PhantomConfig`.

    Raises:
        InputError: a key that is not a field, or a value the generator refuses.
    """
    fields = {field.name for field in dataclasses.fields(PhantomConfig)}
    settings = {key: tuple(value) if isinstance(value, list) else value
                for key, value in OmegaConf.to_container(phantom, resolve=True).items()
                if key not in DATASET_KEYS}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise InputError(f"data.phantom.{unknown[0]} is not a phantom setting: use one of "
                         + ", ".join(sorted(fields | set(DATASET_KEYS))) + ".")
    try:
        return PhantomConfig(**settings)
    except ValueError as error:
        raise InputError(f"data.phantom is invalid: {error}; fix it in conf/data/.") from None


def make_data(cfg: DictConfig, out_dir: Path, if_empty: bool = False) -> Path:
    """Writes the phantom data set into ``out_dir``; with ``if_empty``, a folder that
    already holds files (real scans, or phantoms of an earlier run) is left alone."""
    out_dir = Path(out_dir)
    if if_empty and out_dir.is_dir() and any(
            not path.name.startswith(".") for path in out_dir.iterdir()):
        print(f"{out_dir} already holds data; not overwriting it")
        return out_dir
    phantom = cfg.data.phantom
    return write_dataset(out_dir, int(phantom.subjects), int(phantom.seed),
                         phantom_config(phantom))
