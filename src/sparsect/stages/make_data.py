"""``sparsect make-data``: the built-in phantom scans, written as NIfTI (``cfg.data.phantom``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from sparsect.data.phantom import PhantomConfig, write_dataset


def make_data(cfg: DictConfig, out_dir: Path, if_empty: bool = False) -> Path:
    """Writes the phantom data set into ``out_dir``; with ``if_empty``, a folder that
    already holds files (real scans, or phantoms of an earlier run) is left alone."""
    out_dir = Path(out_dir)
    if if_empty and out_dir.is_dir() and any(
            not path.name.startswith(".") for path in out_dir.iterdir()):
        print(f"{out_dir} already holds data; not overwriting it")
        return out_dir
    phantom = cfg.data.phantom
    config = PhantomConfig(shape=tuple(phantom.shape), spacing_mm=tuple(phantom.spacing_mm))
    return write_dataset(out_dir, int(phantom.subjects), int(phantom.seed), config)
