"""Stage ``report``: the evaluations of the swept view counts, merged into one report."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from sparsect.errors import InputError
from sparsect.evaluation.report import write_report
from sparsect.models.variants import variant_table


def _folders(root: Path, cfg: DictConfig, command: str) -> dict[int, Path]:
    folders = {int(views): Path(root) / str(views) for views in cfg.sweep.views}
    missing = [str(folder) for folder in folders.values() if not folder.is_dir()]
    if missing:
        raise InputError(f"Folder(s) {', '.join(missing)} missing: run `dvc repro` (or "
                         f"`sparsect {command}`) for every view of sweep.views.")
    return folders


def report(cfg: DictConfig, evaluations: Path, out_dir: Path,
           external: Path | None = None, followup: Path | None = None) -> Path:
    """Merges ``evaluations/<views>/`` (and ``external/<views>/``, the real scans) for
    every view count of ``cfg.sweep.views`` (other folders, e.g. of an earlier sweep, are
    ignored), and ``followup/<views>/`` for ``cfg.followup.views``; learned models are
    listed in the order of the variant table."""
    folders = _folders(Path(evaluations), cfg, "evaluate")
    external_dirs = None if external is None else _folders(Path(external), cfg, "external")
    followup_dirs = None
    if followup is not None:  # followup@V runs at followup.views
        followup_dirs = {int(v): Path(followup) / str(v) for v in cfg.followup.views}
        missing = [str(f) for f in followup_dirs.values() if not f.is_dir()]
        if missing:
            raise InputError(f"Folder(s) {', '.join(missing)} missing: run `dvc repro` (or "
                             "`sparsect followup`) for every view of followup.views.")
    return write_report(folders, out_dir, models=tuple(variant_table(cfg)),
                        external_dirs=external_dirs, followup_dirs=followup_dirs)
