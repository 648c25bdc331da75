"""Stage ``masks``: tissue-class masks of the full-dose slices (training targets)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from sparsect.data.split import SPLITS
from sparsect.data.store import atomic_dir, atomic_write_json, load_array, save_array
from sparsect.errors import InputError
from sparsect.priors.classes import TISSUE_CLASSES
from sparsect.priors.masks import tissue_masks_from_hu, tissue_masks_from_labels
from sparsect.priors.organs import NO_LABEL, ORGAN_TO_TISSUE


def label_table(spec: str | Mapping) -> dict[int, int]:
    """``"phantom"`` -> the built-in organ table; a mapping label -> class name otherwise."""
    if isinstance(spec, str):
        if spec != "phantom":
            raise InputError(
                f"masks.label_table '{spec}' is unknown: use 'phantom' or a mapping "
                "from label value to one of " + ", ".join(TISSUE_CLASSES) + "."
            )
        return dict(ORGAN_TO_TISSUE)
    table = {}
    for label, name in spec.items():
        if name not in TISSUE_CLASSES:
            raise InputError(
                f"masks.label_table maps {label} to '{name}', which is not a tissue class: "
                "use one of " + ", ".join(TISSUE_CLASSES) + "."
            )
        table[int(label)] = TISSUE_CLASSES.index(name)
    return table


def masks(cfg: DictConfig, prepared_dir: Path, out_dir: Path) -> Path:
    """Writes ``out_dir/<split>/masks.npy`` (``(N, H, W)`` uint8 tissue classes) and
    ``out_dir/summary.json`` (class fractions and how many slices used label maps)."""
    mask_cfg = cfg.masks
    table = label_table(mask_cfg.label_table) if mask_cfg.use_labels else {}
    summary: dict = {}
    with atomic_dir(Path(out_dir)) as tmp:
        for split in SPLITS:
            hu = load_array(Path(prepared_dir) / split, "hu")
            labels = load_array(Path(prepared_dir) / split, "labels")
            classes = np.empty(hu.shape, dtype=np.uint8)
            from_labels = 0
            for i in range(len(hu)):
                if mask_cfg.use_labels and labels[i].min() > NO_LABEL:
                    classes[i] = tissue_masks_from_labels(np.asarray(labels[i]), table)
                    from_labels += 1
                else:
                    classes[i] = tissue_masks_from_hu(
                        np.asarray(hu[i]), int(mask_cfg.min_component_voxels)
                    )
            (tmp / split).mkdir()
            save_array(tmp / split, "masks", classes)
            fractions = np.bincount(classes.ravel(), minlength=len(TISSUE_CLASSES)) / classes.size
            summary[split] = {
                "slices": len(classes),
                "from_labels": from_labels,
                "class_fraction": dict(zip(TISSUE_CLASSES, map(float, fractions), strict=True)),
            }
        atomic_write_json(tmp / "summary.json", summary)
    return Path(out_dir)
