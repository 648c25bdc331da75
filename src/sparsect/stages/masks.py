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
from sparsect.priors.masks import FROM_HU, tissue_masks_from_hu, tissue_masks_from_labels_and_hu
from sparsect.priors.organs import NO_LABEL, ORGAN_TO_TISSUE
from sparsect.priors.totalsegmentator import TISSUE_TABLES

_ALLOWED_NAMES = (*TISSUE_CLASSES, "hu")


def label_table(spec: str | Mapping) -> dict[int, int]:
    """The ``masks.label_table`` setting as label value -> tissue class index (or ``FROM_HU``).

    ``spec`` is one of:

    - ``"phantom"``: the built-in organ table of the phantoms' label maps;
    - ``"totalsegmentator"``: TotalSegmentator v2 "total" maps (117 structures);
    - ``"totalsegmentator_v1"``: TotalSegmentator v1 "total" maps (104 structures);
    - a mapping label value -> tissue class name, or ``"hu"`` for voxels whose class
      comes from the HU thresholds of the same slice.

    In the TotalSegmentator tables label 0 ("none of the structures": fat,
    unsegmented muscle, air), the digestive tract (its lumen holds gas or fat-dense
    contents) and v1's mixed "face" region take their classes from HU; see
    :mod:`sparsect.priors.totalsegmentator`.

    Raises:
        InputError: if ``spec`` is an unknown name or maps a value to an unknown class;
            use a listed name or a tissue class name.
    """
    if isinstance(spec, str):
        if spec == "phantom":
            return dict(ORGAN_TO_TISSUE)
        if spec in TISSUE_TABLES:
            return dict(TISSUE_TABLES[spec])
        raise InputError(
            f"masks.label_table '{spec}' is unknown: use 'phantom', "
            + ", ".join(f"'{name}'" for name in TISSUE_TABLES)
            + " or a mapping from label value to one of "
            + ", ".join(_ALLOWED_NAMES)
            + "."
        )
    table = {}
    for label, name in spec.items():
        if name not in _ALLOWED_NAMES:
            raise InputError(
                f"masks.label_table maps {label} to '{name}', which is not a tissue class: "
                "use one of " + ", ".join(_ALLOWED_NAMES) + "."
            )
        table[int(label)] = FROM_HU if name == "hu" else TISSUE_CLASSES.index(name)
    return table


def masks(cfg: DictConfig, prepared_dir: Path, out_dir: Path) -> Path:
    """Writes ``out_dir/<split>/masks.npy`` (``(N, H, W)`` uint8 tissue classes) and
    ``out_dir/summary.json`` (class fractions and how many slices used label maps).

    A slice with a label map takes its classes from ``masks.label_table`` (see
    :func:`label_table`), completed from HU where the table says so; a slice
    without one takes them from HU thresholds and morphology.
    """
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
