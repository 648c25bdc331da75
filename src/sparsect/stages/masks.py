"""Stage ``masks``: tissue-class masks of the full-dose slices (training targets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from sparsect.data.split import SPLITS
from sparsect.data.store import atomic_dir, atomic_write_json, load_array, open_array
from sparsect.priors.classes import TISSUE_CLASSES
from sparsect.priors.labels import label_table
from sparsect.priors.masks import tissue_masks_from_hu, tissue_masks_from_labels_and_hu
from sparsect.priors.organs import NO_LABEL


def masks(cfg: DictConfig, prepared_dir: Path, out_dir: Path) -> Path:
    """Writes ``out_dir/<split>/masks.npy`` (``(N, H, W)`` uint8 tissue classes) and
    ``out_dir/summary.json`` (class fractions and how many slices used label maps).

    A slice with a label map takes its classes from ``masks.label_table`` (see
    :func:`sparsect.priors.labels.label_table`), completed from HU where the table says
    so; a slice without one takes them from HU thresholds and morphology.
    """
    mask_cfg = cfg.masks
    table = label_table(mask_cfg.label_table, "masks.label_table") if mask_cfg.use_labels else {}
    summary: dict = {}
    with atomic_dir(Path(out_dir)) as tmp:
        for split in SPLITS:
            hu = load_array(Path(prepared_dir) / split, "hu")
            labels = load_array(Path(prepared_dir) / split, "labels")
            (tmp / split).mkdir()
            classes = open_array(tmp / split, "masks", hu.shape, np.uint8)
            counts = np.zeros(len(TISSUE_CLASSES), np.int64)
            from_labels = 0
            for i in range(len(hu)):
                if mask_cfg.use_labels and labels[i].min() > NO_LABEL:
                    classes[i] = tissue_masks_from_labels_and_hu(
                        np.asarray(labels[i]),
                        np.asarray(hu[i]),
                        table,
                        int(mask_cfg.min_component_voxels),
                    )
                    from_labels += 1
                else:
                    classes[i] = tissue_masks_from_hu(
                        np.asarray(hu[i]), int(mask_cfg.min_component_voxels)
                    )
                counts += np.bincount(classes[i].ravel(), minlength=len(TISSUE_CLASSES))
            classes.flush()
            fractions = counts / classes.size
            summary[split] = {
                "slices": len(classes),
                "from_labels": from_labels,
                "class_fraction": dict(zip(TISSUE_CLASSES, map(float, fractions), strict=True)),
            }
        atomic_write_json(tmp / "summary.json", summary)
    return Path(out_dir)
