"""Agreement between label-derived and HU-derived tissue classes on a real scan.

For every axial slice of ``--scan`` (a CT in HU) and ``--labels`` (its label
map on the same grid), computes the classes of the ``masks`` stage with
``--table`` (label table plus HU where the table defers to HU) and the pure-HU
classes (thresholds and morphology), then prints, over the voxels a structure
covers (label != 0 and not deferred to HU): the fraction where both agree, the
confusion matrix (rows: label classes, columns: HU classes), and per class the
voxel counts, the agreement and the Dice between the two.

    python scripts/label_agreement.py --scan /work/shared/realct/abdomen_upper_ct.nii.gz \\
        --labels /work/shared/realct/abdomen_upper_ct_seg.nii.gz --table totalsegmentator

With ``--by-structure`` it also lists, per label value, the voxels and the
fraction whose HU class is the table's class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from sparsect.priors.classes import NUM_TISSUE_CLASSES, TISSUE_CLASSES
from sparsect.priors.labels import label_table
from sparsect.priors.masks import FROM_HU, tissue_masks_from_hu, tissue_masks_from_labels_and_hu
from sparsect.priors.totalsegmentator import STRUCTURES_V1, STRUCTURES_V2

STRUCTURE_NAMES = {"totalsegmentator": STRUCTURES_V2, "totalsegmentator_v1": STRUCTURES_V1}


def classes_of_scan(
    scan: Path, labels: Path, table: dict[int, int], min_component_pixels: int = 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels, table+HU classes, HU classes)``, each ``(Z, X, Y)``: one entry per axial slice.

    Raises:
        ValueError: if the label map is not on the grid of the scan; resample it to the scan.
    """
    hu_image, label_image = nib.load(scan), nib.load(labels)
    if hu_image.shape != label_image.shape or not np.allclose(hu_image.affine, label_image.affine):
        raise ValueError(
            f"{labels} is not on the grid of {scan}: resample the label map to the scan."
        )
    hu = np.moveaxis(np.asarray(hu_image.get_fdata(dtype=np.float32)), -1, 0)
    label_map = np.moveaxis(np.asarray(label_image.dataobj).astype(np.int64), -1, 0)
    from_labels = tissue_masks_from_labels_and_hu(label_map, hu, table, min_component_pixels)
    from_hu = tissue_masks_from_hu(hu, min_component_pixels)
    return label_map, from_labels, from_hu


def agreement(
    label_map: np.ndarray, from_labels: np.ndarray, from_hu: np.ndarray, table: dict[int, int]
) -> dict:
    """Agreement figures over the voxels the table covers (label != 0, not ``FROM_HU``)."""
    deferred = [value for value, tissue in table.items() if tissue == FROM_HU]
    covered = (label_map != 0) & ~np.isin(label_map, deferred)
    a, b = from_labels[covered], from_hu[covered]
    confusion = np.zeros((NUM_TISSUE_CLASSES, NUM_TISSUE_CLASSES), dtype=np.int64)
    np.add.at(confusion, (a, b), 1)
    per_class = {}
    for tissue, name in enumerate(TISSUE_CLASSES):
        in_labels, in_hu = int((a == tissue).sum()), int((b == tissue).sum())
        both = int(confusion[tissue, tissue])
        per_class[name] = {
            "label_voxels": in_labels,
            "hu_voxels": in_hu,
            "agreement": both / in_labels if in_labels else float("nan"),
            "dice": 2 * both / (in_labels + in_hu) if in_labels + in_hu else float("nan"),
        }
    return {
        "covered_voxels": int(covered.sum()),
        "voxels": int(label_map.size),
        "agreement": float((a == b).mean()) if a.size else float("nan"),
        "confusion": confusion,
        "per_class": per_class,
    }


def by_structure(label_map: np.ndarray, from_hu: np.ndarray, table: dict[int, int]) -> list:
    """``(value, voxels, fraction whose HU class is the table class)`` per covered label value."""
    rows = []
    for value in np.unique(label_map):
        tissue = table.get(int(value), FROM_HU)
        if value == 0 or tissue == FROM_HU:
            continue
        here = label_map == value
        rows.append((int(value), int(here.sum()), float((from_hu[here] == tissue).mean())))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", type=Path, required=True, help="CT in HU (NIfTI)")
    parser.add_argument("--labels", type=Path, required=True, help="label map on the same grid")
    parser.add_argument("--table", default="totalsegmentator", help="a masks.label_table name")
    parser.add_argument("--min-component-pixels", type=int, default=20)
    parser.add_argument("--by-structure", action="store_true")
    args = parser.parse_args()
    table = label_table(args.table)
    label_map, from_labels, from_hu = classes_of_scan(
        args.scan, args.labels, table, args.min_component_pixels
    )
    figures = agreement(label_map, from_labels, from_hu, table)
    print(f"{args.labels.name} with table '{args.table}': {len(label_map)} axial slices, "
          f"{figures['covered_voxels']} of {figures['voxels']} voxels covered")
    print(f"agreement on covered voxels: {figures['agreement']:.4f}")
    print(f"{'class':<12} {'label vox':>10} {'HU vox':>10} {'agreement':>10} {'dice':>8}")
    for name, row in figures["per_class"].items():
        print(f"{name:<12} {row['label_voxels']:>10} {row['hu_voxels']:>10} "
              f"{row['agreement']:>10.4f} {row['dice']:>8.4f}")
    print("confusion (rows: label classes, columns: HU classes):")
    print(" " * 12 + "".join(f"{name:>12}" for name in TISSUE_CLASSES))
    for name, row in zip(TISSUE_CLASSES, figures["confusion"], strict=True):
        print(f"{name:<12}" + "".join(f"{int(n):>12}" for n in row))
    if args.by_structure:
        names = STRUCTURE_NAMES.get(args.table, {})
        print("per structure: value, name, table class, voxels, fraction with that HU class")
        for value, voxels, fraction in by_structure(label_map, from_hu, table):
            tissue = TISSUE_CLASSES[table[value]]
            print(f"{value:>5} {names.get(value, '?'):<32} {tissue:<12} {voxels:>7} {fraction:.3f}")


if __name__ == "__main__":
    main()
