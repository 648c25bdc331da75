"""Stage ``report``: the evaluations of the swept view counts, merged into one report."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from sparsect.errors import InputError
from sparsect.evaluation.report import write_report
from sparsect.models.variants import variant_table


def report(cfg: DictConfig, evaluations: Path, out_dir: Path) -> Path:
    """Merges ``evaluations/<views>/`` for every view count of ``cfg.sweep.views``
    (other folders, e.g. of an earlier sweep, are ignored); learned models are
    listed in the order of the variant table."""
    evaluations = Path(evaluations)
    folders = {int(views): evaluations / str(views) for views in cfg.sweep.views}
    missing = [str(folder) for folder in folders.values() if not folder.is_dir()]
    if missing:
        raise InputError(f"Evaluation folder(s) {', '.join(missing)} missing: run "
                         "`dvc repro` (or `sparsect evaluate`) for every view of sweep.views.")
    return write_report(folders, out_dir, models=tuple(variant_table(cfg)))
