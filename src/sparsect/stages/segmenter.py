"""Stage ``segmenter``: the fixed downstream organ segmenter of the task-based metric.

Trained once on the full-dose reference slices of the train split (never on
reconstructions), the checkpoint chosen by the mean organ Dice on the validation
split, then frozen: evaluation segments every method's reconstruction with it and
scores Dice and HD95 per organ against the true labels
(:mod:`sparsect.evaluation.segmentation`). Slices of scans without a label map
are left out. Independent of the view count, so one segmenter serves them all.

Writes ``segmenter.ckpt`` (:func:`sparsect.models.segmenter.load_segmenter`) and
``summary.json``: the organs and their label values, validation Dice per organ
(mean over the validation subjects, as evaluation computes it) and HD95, the epoch
kept and the epoch count. The training time is printed, not written: the output must
be the same bytes on every run (``dvc.lock`` records its hash).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from sparsect.data.store import (
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    load_array,
    read_json,
)
from sparsect.errors import InputError
from sparsect.evaluation.segmentation import mean_organ_dice, organ_scores
from sparsect.models.segmenter import fit, save_segmenter, segment
from sparsect.priors.organs import DOWNSTREAM_ORGANS, NO_LABEL, segmenter_classes


def labelled_split(prepared_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """HU slices, segmenter classes and subject ids of the slices of ``split`` that have a
    label map.

    Raises:
        InputError: if none has one (the segmenter learns from label maps).
    """
    folder = Path(prepared_dir) / split
    hu, labels = load_array(folder, "hu"), load_array(folder, "labels")
    subjects = [str(entry[0]) for entry in read_json(folder / "index.json")]
    keep = ~(np.asarray(labels) == NO_LABEL).any(axis=(1, 2))
    if not keep.any():
        raise InputError(f"No slice of '{folder}' has an organ label map: the segmenter "
                         "learns from label maps; add *_seg files to data/ (the phantoms "
                         "have them).")
    try:
        classes = segmenter_classes(np.asarray(labels[keep]))
    except ValueError as error:
        raise InputError(f"The labels of '{folder}' are not phantom organ labels ({error}): "
                         "the segmenter is defined for the phantom label table.") from None
    return (np.asarray(hu[keep], dtype=np.float32), classes,
            [s for s, k in zip(subjects, keep, strict=True) if k])


def spacings(prepared_dir: Path, subjects: list[str]) -> dict[str, tuple[float, float, float]]:
    """Subject -> ``(row mm, col mm, slice mm)`` of the prepared grid."""
    manifest = read_json(Path(prepared_dir) / "manifest.json")
    pixel = float(manifest["pixel_size_mm"])
    return {s: (pixel, pixel, float(manifest["subjects"][s]["z_spacing_mm"]))
            for s in dict.fromkeys(subjects)}


def _mean(values: dict[str, float]) -> float | None:
    finite = [v for v in values.values() if not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def segmenter(cfg: DictConfig, prepared_dir: Path, out_dir: Path) -> Path:
    """Trains the organ segmenter as ``cfg.segmenter`` says; writes ``out_dir``."""
    settings = cfg.segmenter
    train_hu, train_classes, _ = labelled_split(prepared_dir, "train")
    val_hu, val_classes, val_subjects = labelled_split(prepared_dir, "val")
    crop = settings.get("crop")
    with atomic_dir(Path(out_dir)) as tmp:
        start = time.perf_counter()
        module, history = fit(
            train_hu, train_classes, val_hu, val_classes, tmp / "work",
            epochs=int(settings.epochs), batch_size=int(settings.batch_size),
            lr=float(settings.lr), channels=int(settings.channels), depth=int(settings.depth),
            crop=None if crop is None else int(crop), seed=int(settings.seed),
            accelerator=str(settings.get("accelerator", "cpu")),
        )
        seconds = time.perf_counter() - start
        for leftover in sorted((tmp / "work").glob("*")):
            leftover.unlink()
        (tmp / "work").rmdir()
        atomic_write_bytes(tmp / "segmenter.ckpt", save_segmenter(module))
        scores = organ_scores(segment(module, val_hu), val_classes, val_subjects,
                              spacings(prepared_dir, val_subjects))
        summary: dict[str, Any] = {
            "organs": {name: list(labels) for name, labels in DOWNSTREAM_ORGANS.items()},
            "classes": ["background", "body", *DOWNSTREAM_ORGANS],
            "split": "val",
            "val_dice": {organ: _mean(s["dice"]) for organ, s in scores.items()},
            "val_hd95_mm": {organ: _mean(s["hd95_mm"]) for organ, s in scores.items()},
            "val_mean_dice": _mean(mean_organ_dice(scores)),
            "one_sided": {organ: s["one_sided"] for organ, s in scores.items()},
            "epochs": history["epochs"],
            "selected_epoch": history["selected_epoch"],
            "train_slices": len(train_hu),
            "val_slices": len(val_hu),
            "history": history["history"],
        }
        atomic_write_json(tmp / "summary.json", summary)
    print(f"[segmenter] trained in {seconds:.0f}s; validation mean organ Dice "
          f"{summary['val_mean_dice'] or math.nan:.3f}", file=sys.stderr, flush=True)
    return Path(out_dir)
