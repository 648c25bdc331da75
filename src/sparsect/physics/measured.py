"""Measured sinograms: raw detector counts with their flat field -> line integrals.

A scanner records photon counts ``I`` per view and bin; the reconstruction needs
line integrals ``p = log(I0 / I)`` (Beer-Lambert), with ``I0`` the flat field,
the counts without an object (per bin, or per view and bin when the tube output
drifts). A dark field (the detector's offset without X-rays) is subtracted from
both first when given.

>>> counts = np.array([[100000.0, 36788.0]])
>>> np.round(line_integrals_from_counts(counts, 1e5, "scan.npy"), 3).tolist()
[[0.0, 1.0]]
"""

from __future__ import annotations

import numpy as np

from sparsect.errors import InputError


def line_integrals_from_counts(counts: np.ndarray, flat_field: float | np.ndarray, name: str,
                               dark_field: float | np.ndarray = 0.0) -> np.ndarray:
    """``log((I0 - dark) / (I - dark))`` as float32, the shape of ``counts``.

    Args:
        counts: ``(..., views, detectors)`` raw counts.
        flat_field: ``I0``: a number, or an array that broadcasts against ``counts``
            (``(detectors,)``, ``(views, detectors)``, ...).
        name: the input's name, for messages.
        dark_field: detector offset, a number or an array like ``flat_field``.

    Raises:
        InputError: zero or negative counts (after the dark field), a flat field that
            is not positive, or one whose shape does not fit the counts.
    """
    counts = np.asarray(counts, np.float64)
    try:
        flat = np.broadcast_to(np.asarray(flat_field, np.float64) - dark_field, counts.shape)
        signal = counts - np.broadcast_to(np.asarray(dark_field, np.float64), counts.shape)
    except ValueError:
        raise InputError(
            f"The flat or dark field of sinogram '{name}' has shape "
            f"{np.shape(flat_field)} / {np.shape(dark_field)}, which does not fit the counts "
            f"{counts.shape}: give a number or an array of shape (detectors,) or "
            "(views, detectors)."
        ) from None
    if not np.isfinite(counts).all() or not np.isfinite(flat).all():
        raise InputError(f"Sinogram '{name}' or its flat field holds NaN or infinite values: "
                         "fix the measurement.")
    if (flat <= 0).any():
        raise InputError(f"The flat field of sinogram '{name}' is zero or negative in "
                         f"{int((flat <= 0).sum())} bins: give I0 > 0 (after the dark field).")
    bad = signal <= 0
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(
            f"Sinogram '{name}' has {int(bad.sum())} zero or negative counts (first at index "
            f"{where}), whose logarithm is undefined: replace photon-starved bins (by 1 "
            "count, or by interpolating their neighbours) or give line integrals."
        )
    return np.log(flat / signal).astype(np.float32)
