"""Batched iterative reconstructions on :class:`~sparsect.physics.operator.CTOperator`.

SIRT, CGLS and TV (Chambolle-Pock / PDHG) run on all slices at once, one slice
per column (``(H * W, B)`` images, ``(views * bins, B)`` sinograms), with the
same updates as their slice-by-slice counterparts in :mod:`.reconstruct`
(ASTRA's SIRT and CGLS, the numpy TV loop): ``tests/physics/test_physics_iterative.py``
holds them to 1 HU and 0.02 dB of those.

Each solver records the iterate after every count in ``record``: a grid over
iteration counts costs one run to the largest count, since the iterates of a
longer run pass through those of a shorter one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from .operator import CTOperator

# ASTRA's SIRT inverts its row and column sums only above this value (zero otherwise).
_SIRT_EPS = 1e-6


def _counts(record: Iterable[int] | int) -> list[int]:
    counts = sorted({int(record)} if isinstance(record, int) else {int(k) for k in record})
    if not counts or counts[0] < 1:
        raise ValueError(f"Iteration counts must be positive integers, got {counts}.")
    return counts


def _images(op: CTOperator, x: torch.Tensor) -> torch.Tensor:
    """``(H * W, B)`` -> ``(B, H, W)``."""
    return x.T.reshape(-1, *op.geometry.image_shape).clone()


def _columns(op: CTOperator, data: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``(B, *shape)`` -> ``(prod(shape), B)`` in the operator's dtype, on the operator's device."""
    if data.ndim != 3 or tuple(data.shape[1:]) != shape:
        raise ValueError(f"Expected a (slices, {shape[0]}, {shape[1]}) stack, "
                         f"got {tuple(data.shape)}.")
    # a copy, always: the solvers update it in place, and it may be the caller's tensor
    return data.to(op.device, op.dtype).reshape(len(data), -1).T.clone(
        memory_format=torch.contiguous_format)


def _inverse(sums: torch.Tensor) -> torch.Tensor:
    return torch.where(sums > _SIRT_EPS, 1.0 / sums.clamp_min(_SIRT_EPS), torch.zeros_like(sums))


@torch.no_grad()
def sirt(op: CTOperator, sinograms: torch.Tensor, record: Iterable[int] | int = 100,
         nonnegative: bool = True) -> dict[int, torch.Tensor]:
    """SIRT from zero, ASTRA's update: ``x += C A^T R (b - A x)``, then ``x >= 0``.

    ``R`` and ``C`` are the inverse row and column sums of ``A``.

    Args:
        op: The operator of the acquisition.
        sinograms: ``(B, views, bins)`` line integrals.
        record: The iteration count(s) whose iterates are returned.
        nonnegative: Clip negative values after each update (ASTRA's ``MinConstraint=0``).

    Returns:
        Iteration count -> ``(B, H, W)`` images in 1/mm.
    """
    counts = _counts(record)
    b = _columns(op, sinograms, op.geometry.sinogram_shape)
    pixels, rays = op.matrix.shape[1], op.matrix.shape[0]
    rows = _inverse(op.forward_columns(torch.ones(pixels, 1, device=op.device, dtype=op.dtype)))
    cols = _inverse(op.adjoint_columns(torch.ones(rays, 1, device=op.device, dtype=op.dtype)))
    x = torch.zeros(op.matrix.shape[1], b.shape[1], device=op.device, dtype=op.dtype)
    out = {}
    for k in range(1, counts[-1] + 1):
        x += cols * op.adjoint_columns(rows * (b - op.forward_columns(x)))
        if nonnegative:
            x.clamp_(min=0.0)
        if k in counts:
            out[k] = _images(op, x)
    return out


@torch.no_grad()
def cgls(op: CTOperator, sinograms: torch.Tensor,
         record: Iterable[int] | int = 20) -> dict[int, torch.Tensor]:
    """CGLS (conjugate gradients on the normal equations) from zero, per slice.

    Each column keeps its own step sizes, so the batch gives what slice-by-slice
    runs give; a column whose residual vanished stops moving.

    Returns:
        Iteration count -> ``(B, H, W)`` images in 1/mm.
    """
    counts = _counts(record)
    r = _columns(op, sinograms, op.geometry.sinogram_shape).clone()
    x = torch.zeros(op.matrix.shape[1], r.shape[1], device=op.device, dtype=op.dtype)
    p = op.adjoint_columns(r)
    gamma = (p * p).sum(0)
    out = {}
    for k in range(1, counts[-1] + 1):
        q = op.forward_columns(p)
        qq = (q * q).sum(0)
        alpha = torch.where(qq > 0, gamma / qq.clamp_min(torch.finfo(qq.dtype).tiny), 0.0)
        x += alpha * p
        r -= alpha * q
        s = op.adjoint_columns(r)
        gamma_new = (s * s).sum(0)
        beta = torch.where(gamma > 0, gamma_new / gamma.clamp_min(torch.finfo(gamma.dtype).tiny),
                           0.0)
        p = s + beta * p
        gamma = gamma_new
        if k in counts:
            out[k] = _images(op, x)
    return out


def _gradient(x: torch.Tensor) -> torch.Tensor:
    """Forward differences with Neumann boundary of ``(H, W, B)``: ``(2, H, W, B)``."""
    grad = torch.zeros(2, *x.shape, dtype=x.dtype, device=x.device)
    grad[0, :-1] = x[1:] - x[:-1]
    grad[1, :, :-1] = x[:, 1:] - x[:, :-1]
    return grad


def _divergence(q: torch.Tensor) -> torch.Tensor:
    """Negative adjoint of :func:`_gradient`."""
    div = torch.zeros(q.shape[1:], dtype=q.dtype, device=q.device)
    div[:-1] += q[0, :-1]
    div[1:] -= q[0, :-1]
    div[:, :-1] += q[1, :, :-1]
    div[:, 1:] -= q[1, :, :-1]
    return div


@torch.no_grad()
def tv(op: CTOperator, sinograms: torch.Tensor, initial: torch.Tensor,
       record: Iterable[int] | int = 100, weight: float = 0.03,
       nonnegative: bool = True) -> dict[int, torch.Tensor]:
    """Chambolle-Pock for ``min_x 0.5 ||Ax - b||^2 + weight * px^2 * TV(x)``, ``x >= 0``.

    The same problem, scaling and steps as the slice-by-slice ``reconstruct("tv")``
    (see its docstring): isotropic TV of ``mu`` with the pixel size ``px`` in mm,
    the gradient scaled to the norm of ``A``, ``tau = sigma = 1 / ||K||``.

    Args:
        op: The operator of the acquisition.
        sinograms: ``(B, views, bins)`` line integrals.
        initial: ``(B, H, W)`` starting images (the ram-lak FBP).
        record: The iteration count(s) whose iterates are returned.
        weight: TV weight.
        nonnegative: Keep ``x >= 0``.

    Returns:
        Iteration count -> ``(B, H, W)`` images in 1/mm.
    """
    counts = _counts(record)
    height, width = op.geometry.image_shape
    b = _columns(op, sinograms, op.geometry.sinogram_shape)
    norm_a = op.norm()
    scale = norm_a / math.sqrt(8.0)  # ||grad|| <= sqrt(8) in 2D
    step = 1.0 / (math.sqrt(2.0) * norm_a)
    bound = weight * op.geometry.pixel_size_mm**2 / scale
    x = _columns(op, initial, op.geometry.image_shape).reshape(height, width, -1)
    if nonnegative:
        x.clamp_(min=0.0)
    x_bar = x.clone()
    p = torch.zeros_like(b)
    q = torch.zeros(2, height, width, b.shape[1], device=op.device, dtype=op.dtype)
    out = {}
    for k in range(1, counts[-1] + 1):
        p = (p + step * (op.forward_columns(x_bar.reshape(height * width, -1)) - b)) / (1 + step)
        q += (step * scale) * _gradient(x_bar)
        q /= torch.clamp(torch.sqrt((q * q).sum(0)) / bound, min=1.0)
        backprojected = op.adjoint_columns(p).reshape(height, width, -1)
        x_new = x - step * (backprojected - scale * _divergence(q))
        if nonnegative:
            x_new.clamp_(min=0.0)
        x_bar = 2.0 * x_new - x
        x = x_new
        if k in counts:
            out[k] = _images(op, x.reshape(height * width, -1))
    return out


@torch.no_grad()
def piccs(op: CTOperator, sinograms: torch.Tensor, initial: torch.Tensor, prior: torch.Tensor,
          record: Iterable[int] | int = 100, weight: float = 0.03, alpha: float = 0.5,
          nonnegative: bool = True) -> dict[int, torch.Tensor]:
    """Prior image constrained compressed sensing (Chen et al., Med. Phys. 35, 2008) in its
    penalised form, by Chambolle-Pock:

        ``min_x 0.5 ||Ax - b||^2 + weight * px^2 * (alpha TV(x - x_p) + (1 - alpha) TV(x))``

    on :func:`tv`'s scaling (``alpha = 0`` is :func:`tv`'s problem; ``alpha = 1`` trusts
    only the change from the prior ``x_p`` to be sparse). ``K = (A, grad, grad)``, each
    block scaled to ``||A||``, so ``tau = sigma = 1 / (sqrt(3) ||A||)``; the prior enters
    as the shift of the first gradient block's dual ball.

    Args:
        op: The operator of the acquisition.
        sinograms: ``(B, views, bins)`` line integrals.
        initial: ``(B, H, W)`` starting images (the FBP).
        prior: ``(B, H, W)`` prior images in 1/mm on the same grid (registered).
        record: The iteration count(s) whose iterates are returned.
        weight: Total TV weight (``lambda``).
        alpha: Share of the weight on ``TV(x - x_p)``, in ``[0, 1]``.
        nonnegative: Keep ``x >= 0``.

    Returns:
        Iteration count -> ``(B, H, W)`` images in 1/mm.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"PICCS alpha must lie in [0, 1], got {alpha}.")
    counts = _counts(record)
    height, width = op.geometry.image_shape
    b = _columns(op, sinograms, op.geometry.sinogram_shape)
    x_p = _columns(op, prior, op.geometry.image_shape).reshape(height, width, -1)
    grad_prior = _gradient(x_p)
    norm_a = op.norm()
    scale = norm_a / math.sqrt(8.0)
    step = 1.0 / (math.sqrt(3.0) * norm_a)
    bounds = (alpha * weight * op.geometry.pixel_size_mm**2 / scale,
              (1.0 - alpha) * weight * op.geometry.pixel_size_mm**2 / scale)
    x = _columns(op, initial, op.geometry.image_shape).reshape(height, width, -1)
    if nonnegative:
        x.clamp_(min=0.0)
    x_bar = x.clone()
    p = torch.zeros_like(b)
    q_change = torch.zeros(2, height, width, b.shape[1], device=op.device, dtype=op.dtype)
    q_image = torch.zeros_like(q_change)
    out = {}
    for k in range(1, counts[-1] + 1):
        p = (p + step * (op.forward_columns(x_bar.reshape(height * width, -1)) - b)) / (1 + step)
        grad = _gradient(x_bar)
        for q, shift, bound in ((q_change, grad_prior, bounds[0]), (q_image, None, bounds[1])):
            q += (step * scale) * (grad if shift is None else grad - shift)
            if bound > 0:
                q /= torch.clamp(torch.sqrt((q * q).sum(0)) / bound, min=1.0)
            else:
                q.zero_()
        backprojected = op.adjoint_columns(p).reshape(height, width, -1)
        x_new = x - step * (backprojected - scale * (_divergence(q_change)
                                                     + _divergence(q_image)))
        if nonnegative:
            x_new.clamp_(min=0.0)
        x_bar = 2.0 * x_new - x
        x = x_new
        if k in counts:
            out[k] = _images(op, x.reshape(height * width, -1))
    return out
