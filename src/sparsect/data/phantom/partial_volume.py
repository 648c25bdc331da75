"""Partial-volume averaging: supersampled values -> one value per output voxel."""

from __future__ import annotations

import numpy as np


class _Blocks:
    """The supersampled values falling into each output voxel, ``(x, y, z, samples)``.

    Most output voxels lie inside one material; only the mixed ones (at
    boundaries) need the per-sample work, which keeps partial-volume averaging cheap.
    """

    def __init__(self, values_ss: np.ndarray, f: int, fz: int) -> None:
        nx, ny, nz = values_ss.shape
        blocks = values_ss.reshape(nx // f, f, ny // f, f, nz // fz, fz)
        blocks = blocks.transpose(0, 2, 4, 1, 3, 5).reshape(nx // f, ny // f, nz // fz, -1)
        self.first = blocks[..., 0].copy()
        self.mixed = blocks.min(axis=-1) != blocks.max(axis=-1)
        self.rows = blocks[self.mixed]

    def mean(self, table: np.ndarray) -> np.ndarray:
        """Average of ``table[value]`` over each output voxel (float32)."""
        out = table[self.first]
        # Sample by sample, in a fixed order: numpy's reductions are free to
        # pick their summation order by SIMD width.
        values = table[self.rows]
        total = values[:, 0].copy()
        for j in range(1, values.shape[1]):
            total += values[:, j]
        out[self.mixed] = total / np.float32(values.shape[1])
        return out

    def majority(self) -> np.ndarray:
        """Most frequent value per output voxel (ties go to the lower value)."""
        out = self.first.copy()
        if self.rows.size:
            present = np.unique(self.rows)
            counts = np.stack([(self.rows == value).sum(axis=1) for value in present], axis=1)
            out[self.mixed] = present[np.argmax(counts, axis=1)]
        return out
