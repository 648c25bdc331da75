"""The CT system matrix ``A`` as a torch sparse operator: batched, differentiable, CPU or CUDA.

ASTRA computes its projector's weights on the fly, one slice per call, outside
autograd. Here the same weights are exported once per geometry
(``astra.projector.matrix``) and kept as two ``torch.sparse_csr`` matrices, ``A``
and its transpose, so that a whole batch of slices projects in one sparse-dense
product and the backprojection is the exact adjoint. At 128 x 128 / 60 views
(11040 x 16384, 1.8 M non-zeros, 13.5 MiB each) 16 slices project in ~4 ms
forward and ~3 ms adjoint on one CPU core, against ~105 ms and ~65 ms through
ASTRA's CPU loop (``scripts/bench_baselines.py``).

The matrix is built on the **reconstruction** grid with the CPU kernel of
:class:`~sparsect.physics.projector.Projector` (Joseph ``linear`` for parallel
beams, ``line_fanflat`` for fan beams), so it reproduces that projector to float
rounding (~1e-6 relative). Simulation keeps its own, finer operator: data made
with the operator that inverts them would commit the "inverse crime".

Memory: 16 bytes per non-zero (float32 value and int32 column index, in ``A``
and in ``A^T``), with at most ``1.3 x views x detector_count x image_size``
non-zeros for these kernels (0.9 x for fan beams): 28 MiB at 128 x 128 / 60 views, 56 MiB at 120
views, 5.2 GiB at 512 x 512 / 720 views (:func:`estimated_mib`).
:func:`operator_fits` compares the estimate with ``max_mib``
(``physics.operator_max_mib``); past it the callers fall back to ASTRA's
slice-by-slice projector and say so.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable
from typing import Any

import astra
import numpy as np
import torch

from .geometry import Geometry
from .projector import _CPU_KERNEL, astra_geometries

# Non-zeros per (ray x image_size) of the kernels used here, measured at 64-256
# pixels and 30-360 views: 1.23-1.26 (parallel 'linear'), 0.83-0.84 (fan
# 'line_fanflat'); rounded up. Bytes per non-zero: float32 value + int32 index,
# in A and in A^T.
_NNZ_PER_RAY_PIXEL = {"parallel": 1.3, "fan": 0.9}
_BYTES_PER_NNZ = 16

_CACHE: dict[tuple, CTOperator] = {}
_CACHE_LOCK = threading.Lock()


def estimated_mib(geometry: Geometry) -> float:
    """Memory the operator of ``geometry`` will take, in MiB (an upper estimate)."""
    rays = geometry.views * geometry.detector_count
    nnz = _NNZ_PER_RAY_PIXEL[geometry.beam] * rays * geometry.image_size
    return nnz * _BYTES_PER_NNZ / 2**20


def operator_fits(geometry: Geometry, max_mib: float) -> bool:
    """Whether :func:`estimated_mib` of ``geometry`` stays within ``max_mib``."""
    return estimated_mib(geometry) <= max_mib


def power_norm(normal: Callable[[Any], Any], start: Any, iterations: int = 30) -> float:
    """``||A||`` by power iteration on ``normal(x) = A^T A x`` from ``start`` (numpy or
    torch, unit norm), enlarged by 1 % so that step sizes derived from it stay safe.

    A constant image is a good start: it is close to the leading singular vector."""
    x, eigenvalue = start, 0.0
    for _ in range(iterations):
        y = normal(x)
        eigenvalue = float((y * y).sum()) ** 0.5
        x = y / eigenvalue
    return 1.01 * math.sqrt(eigenvalue)


def torch_device(device: str) -> torch.device:
    """``"auto" | "cpu" | "cuda"`` (the ``physics.device`` setting) as a torch device."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"Unknown device {device!r}; choose one of auto, cpu, cuda.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but torch finds no CUDA GPU; "
                         "use device='cpu' or 'auto'.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _csr(matrix: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with warnings.catch_warnings():
        # torch calls its sparse CSR support "beta"; products with dense matrices,
        # all that is used here, are covered by the tests of this module
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int32)),
            torch.from_numpy(matrix.indices.astype(np.int32)),
            torch.from_numpy(matrix.data).to(dtype),
            size=matrix.shape, check_invariants=False).to(device)


def system_matrix(geometry: Geometry) -> Any:
    """ASTRA's projection matrix of ``geometry`` (its CPU kernel) as a scipy CSR matrix.

    Rows are ``view * detector_count + bin``, columns the row-major image pixels,
    the same layout as :meth:`Projector.forward` of the flattened image.
    """
    volume, projection = astra_geometries(geometry)
    projector_id = matrix_id = None
    try:
        projector_id = astra.create_projector(_CPU_KERNEL[geometry.beam], projection, volume)
        matrix_id = astra.projector.matrix(projector_id)
        matrix = astra.matrix.get(matrix_id)
    finally:
        if matrix_id is not None:
            astra.matrix.delete(matrix_id)
        if projector_id is not None:
            astra.projector.delete(projector_id)
    matrix.sort_indices()
    return matrix


class _Project(torch.autograd.Function):
    """``y = M x`` with ``dL/dx = M^T dL/dy``: an exact adjoint pair."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, matrix: torch.Tensor,  # noqa: D102
                transpose: torch.Tensor) -> torch.Tensor:
        ctx.transpose, ctx.matrix = transpose, matrix
        return matrix @ x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:  # noqa: D102
        return _Project.apply(grad.contiguous(), ctx.transpose, ctx.matrix), None, None


class CTOperator:
    """``A`` (forward projection) and ``A^T`` (backprojection) of one geometry on batches.

    Build with :func:`ct_operator` (cached per geometry and device). Images are
    ``mu`` in 1/mm, sinograms line integrals, as everywhere in :mod:`sparsect.physics`.

    Two layouts:

    * :meth:`forward` / :meth:`adjoint`: ``(..., H, W) <-> (..., views, bins)``,
      differentiable (the adjoint is the gradient of the forward and vice versa);
    * :meth:`forward_columns` / :meth:`adjoint_columns`: ``(H * W, B) <-> (views * bins, B)``,
      one slice per column, no copies: the layout the iterative solvers run in.

    >>> from sparsect.physics import Geometry
    >>> g = Geometry("parallel", views=30, image_size=32, pixel_size_mm=1.0)
    >>> A = ct_operator(g, "cpu")
    >>> A(torch.ones(4, 32, 32)).shape
    torch.Size([4, 30, 48])
    """

    def __init__(self, geometry: Geometry, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.geometry = geometry
        self.device = torch.device(device)
        self.dtype = dtype
        matrix = system_matrix(geometry)
        self.nnz = int(matrix.nnz)
        self.matrix = _csr(matrix, self.device, dtype)
        self.transpose = _csr(matrix.T.tocsr(), self.device, dtype)
        self._norm: float | None = None

    @property
    def mib(self) -> float:
        """Memory both matrices take, in MiB."""
        rows, cols = self.matrix.shape
        value = torch.finfo(self.dtype).bits // 8
        return (2 * self.nnz * (value + 4) + 4 * (rows + cols + 2)) / 2**20

    def forward_columns(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` for ``x`` of shape ``(H * W, B)``: ``(views * bins, B)``."""
        return self.matrix @ x

    def adjoint_columns(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y`` for ``y`` of shape ``(views * bins, B)``: ``(H * W, B)``."""
        return self.transpose @ y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Line integrals of ``(..., H, W)`` images: ``(..., views, bins)``, differentiable."""
        g = self.geometry
        return self._apply(x, g.image_shape, g.sinogram_shape, self.matrix, self.transpose)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Backprojection of ``(..., views, bins)`` sinograms: ``(..., H, W)``, differentiable."""
        g = self.geometry
        return self._apply(y, g.sinogram_shape, g.image_shape, self.transpose, self.matrix)

    __call__ = forward

    def _apply(self, data: torch.Tensor, shape_in: tuple[int, int], shape_out: tuple[int, int],
               matrix: torch.Tensor, transpose: torch.Tensor) -> torch.Tensor:
        if tuple(data.shape[-2:]) != shape_in:
            raise ValueError(f"Expected (..., {shape_in[0]}, {shape_in[1]}) for this operator "
                             f"({self.geometry.beam}, {self.geometry.views} views), "
                             f"got {tuple(data.shape)}.")
        batch = data.shape[:-2]
        columns = data.reshape(-1, shape_in[0] * shape_in[1]).to(self.device, self.dtype).T
        out = _Project.apply(columns.contiguous(), matrix, transpose)
        return out.T.reshape(*batch, *shape_out)

    def norm(self, iterations: int = 30) -> float:
        """``||A||`` by power iteration on ``A^T A`` from a constant image, enlarged by 1 %
        so that step sizes derived from it stay safe (computed once)."""
        if self._norm is None:
            pixels = self.matrix.shape[1]
            start = torch.full((pixels, 1), pixels**-0.5, device=self.device, dtype=self.dtype)
            self._norm = power_norm(lambda x: self.adjoint_columns(self.forward_columns(x)),
                                    start, iterations)
        return self._norm

    def __repr__(self) -> str:
        return (f"CTOperator({self.geometry!r}, device={str(self.device)!r}, "
                f"nnz={self.nnz}, {self.mib:.1f} MiB)")


def ct_operator(geometry: Geometry, device: str | torch.device = "cpu") -> CTOperator:
    """The :class:`CTOperator` of ``geometry`` on ``device``, built once per process."""
    device = torch.device(device)
    key = (geometry, str(device))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = CTOperator(geometry, device)
        return _CACHE[key]
