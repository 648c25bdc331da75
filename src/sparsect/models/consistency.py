"""Data consistency after the network (the ``+dc`` methods).

A post-processing network never looks at the measurements again. ``+dc`` adds a few
conjugate-gradient steps on

    ``||A x - y||^2 + lambda ||A||^2 ||x - x_net||^2``

from ``x = x_net``: the network's image is kept where the data say nothing and pulled
towards the measurements where they disagree (Schlemper et al.'s data-consistency
layer, solved by CG as in MoDL). ``lambda`` is relative to ``||A||^2`` so that one grid
serves every geometry.

``lambda`` and the step count are chosen after training on the validation split by
the discrepancy principle (Morozov): among the settings tried, the one whose mean
residual ``||A x - y|| / ||y||`` is closest to the full-dose references' own residual
(the floor set by noise and the finer simulation grid) without going below it. A
residual below the floor means the image fits the noise, which is not consistency.
A network whose residual is already at the floor gets no step (``steps`` 0: ``+dc`` is
the network), and a step that would raise the residual is never chosen. The choice is
recorded in the checkpoint (``dc``) and applied wherever the model is (evaluate,
external, ``sparsect reconstruct``).

The validation floor is the phantoms' and a real scan's own floor can lie well above it
(more noise behind a larger body): fitting down to the phantoms' floor then fits that
scan's noise. So wherever ``+dc`` is applied (:class:`~sparsect.methods.learned.Learned`,
``dc_floor="scan"``), :func:`conjugate_gradient_to_floor` stops each slice at its own
floor, estimated from its measurements without a reference
(:func:`sparsect.physics.noisefloor.residual_floor`; from the counts where measured counts
are given); the recorded ``steps`` are then the most it takes and ``lambda`` stays the
recorded one.

Everything runs in the network's units, ``x = HU / 1000`` and ``y`` with ``A x = y``
(:meth:`sparsect.models.module.ReconModule.sinogram_units`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch


def conjugate_gradient(x_net: torch.Tensor, y: torch.Tensor, operator: Any, lam: float,
                       steps: int, record: Iterable[int] | None = None
                       ) -> dict[int, torch.Tensor]:
    """CG on ``(A^T A + lam ||A||^2 I) x = A^T y + lam ||A||^2 x_net`` from ``x_net``.

    Args:
        x_net: ``(B, H, W)`` network images.
        y: ``(B, views, bins)`` sinograms with ``A x = y``.
        operator: a :class:`~sparsect.physics.operator.CTOperator`.
        lam: weight of the network image, relative to ``||A||^2`` (> 0).
        steps: CG steps.
        record: step counts whose iterates are returned (default: ``steps`` only).

    Returns:
        ``{step count: (B, H, W)}``; every slice has its own step sizes.
    """
    if lam <= 0:
        raise ValueError(f"lambda must be positive, got {lam}")
    wanted = sorted({int(steps), *(record or ())})
    if wanted[0] < 0 or wanted[-1] > steps:
        raise ValueError(f"record must lie in [0, {steps}], got {wanted}")
    shape = x_net.shape
    weight = lam * operator.norm() ** 2
    anchor = x_net.reshape(shape[0], -1).T.to(operator.device, operator.dtype)
    data = y.reshape(shape[0], -1).T.to(operator.device, operator.dtype)
    x = anchor.clone()
    r = operator.adjoint_columns(data - operator.forward_columns(x))
    p = r.clone()
    rr = (r * r).sum(0)
    out = {}
    for step in range(steps + 1):
        if step in wanted:
            out[step] = x.T.reshape(shape).to(x_net.device, x_net.dtype)
        if step == steps:
            break
        q = operator.adjoint_columns(operator.forward_columns(p)) + weight * p
        alpha = rr / (p * q).sum(0).clamp_min(torch.finfo(x.dtype).tiny)
        x = x + alpha * p
        r = r - alpha * q
        rr_next = (r * r).sum(0)
        p = r + (rr_next / rr.clamp_min(torch.finfo(x.dtype).tiny)) * p
        rr = rr_next
    return out


def conjugate_gradient_to_floor(x_net: torch.Tensor, y: torch.Tensor, operator: Any,
                                lam: float, steps: int, floor: torch.Tensor,
                                offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`conjugate_gradient` that stops each slice at its own residual floor.

    Each slice keeps the first iterate (step 0, the network's image, included) whose
    :func:`residual` is at most its ``floor``; a slice that never reaches it keeps the
    last of ``steps``.

    Args:
        floor: ``(B,)`` each slice's floor (NaN: never reached, all ``steps``).
        offset: the projection of the all-ones image (see :func:`residual`).

    Returns:
        ``((B, H, W) images, (B,) steps taken)``.
    """
    iterates = conjugate_gradient(x_net, y, operator, lam, steps, record=range(steps + 1))
    floor = torch.as_tensor(floor, dtype=torch.float32).to(y.device)
    taken = torch.full((len(x_net),), steps, dtype=torch.long)
    out = iterates[steps].clone()
    done = torch.zeros(len(x_net), dtype=torch.bool)
    for step in range(steps + 1):
        x = iterates[step]
        reached = (residual(x.to(y.device), y, operator, offset) <= floor).cpu() & ~done
        out[reached] = x[reached]
        taken[reached] = step
        done |= reached
    return out, taken


def residual(x: torch.Tensor, y: torch.Tensor, operator: Any, offset: torch.Tensor
             ) -> torch.Tensor:
    """Per-slice ``||A mu - s|| / ||s||`` of evaluate's metric, in the network's units:
    ``mu = mu_w (1 + x)`` clipped at zero and ``s = mu_w (y + offset)``, with ``offset``
    the projection of the all-ones image (so ``mu_w`` cancels)."""
    projected = operator.forward(x.clamp_min(-1.0)) - y
    measured = y + offset
    return projected.flatten(1).norm(dim=1) / measured.flatten(1).norm(dim=1)


def choose(trials: Sequence[dict[str, Any]], floor: float, network: dict[str, Any]
           ) -> dict[str, Any]:
    """The discrepancy principle over ``trials`` (dicts with ``residual``, ``lambda``,
    ``steps``) for a network whose own mean residual is ``network["residual"]``.

    A network already at or below the ``floor`` is consistent with the data: no step
    (``steps`` 0, the network's image). Otherwise, among the trials that lower the
    residual, the smallest residual at or above the floor; if every such trial fits
    below the floor, the one closest to it (least fitting of noise); ties go to fewer
    steps, then the larger lambda (the smaller change)."""
    keep = {"lambda": None, "steps": 0, "residual": network["residual"],
            "psnr": network.get("psnr")}
    if network["residual"] <= floor:
        return keep
    lower = [t for t in trials if t["residual"] < network["residual"]]
    if not lower:
        return keep
    above = [t for t in lower if t["residual"] >= floor]
    if above:
        return min(above, key=lambda t: (t["residual"], t["steps"], -t["lambda"]))
    return max(lower, key=lambda t: (t["residual"], -t["steps"], t["lambda"]))


def tune(module: Any, images_hu: np.ndarray, sinograms: np.ndarray, target_hu: np.ndarray,
         lambdas: Sequence[float], steps: Sequence[int], batch_size: int = 64
         ) -> dict[str, Any]:
    """Chooses ``lambda`` and the step count on one split (validation) by :func:`choose`.

    Args:
        module: the trained :class:`~sparsect.models.module.ReconModule`.
        images_hu: ``(N, H, W)`` its predictions on the split (HU).
        sinograms: ``(N, views, bins)`` the split's measured sinograms.
        target_hu: ``(N, H, W)`` the full-dose references (the residual floor; PSNR).

    Returns:
        ``{"lambda", "steps", "floor", "residual", "psnr", "network": {"residual",
        "psnr"}, "trials": [...]}``: the choice, the floor and every trial's mean
        residual and PSNR (PSNR is reported, not used to choose).
    """
    from sparsect.evaluation.metrics import psnr_hu

    scale, lo, hi = float(module.hparams.hu_scale), module.hparams.hu_min, module.hparams.hu_max
    operator = module.operator()
    ones = torch.ones(1, *operator.geometry.image_shape, device=operator.device)
    offset = operator.forward(ones)
    totals: dict[tuple[float, int], list[float]] = {}
    network = np.zeros(2)
    floor = 0.0
    count = len(images_hu)
    for start in range(0, count, batch_size):
        rows = slice(start, start + batch_size)
        with torch.no_grad():
            y = module.sinogram_units(torch.from_numpy(np.asarray(sinograms[rows])))
            x_net = torch.from_numpy(np.asarray(images_hu[rows], np.float32)).to(y.device) / scale
            target = torch.from_numpy(np.asarray(target_hu[rows], np.float32)).to(y.device)
            floor += float(residual(target / scale, y, operator, offset).sum())
            network += [float(residual(x_net, y, operator, offset).sum()),
                        float(psnr_hu(x_net * scale, target, lo, hi).sum())]
            for lam in lambdas:
                iterates = conjugate_gradient(x_net, y, operator, float(lam), max(steps),
                                              record=steps)
                for count_steps in steps:
                    x = iterates[int(count_steps)]
                    sums = totals.setdefault((float(lam), int(count_steps)), [0.0, 0.0])
                    sums[0] += float(residual(x, y, operator, offset).sum())
                    sums[1] += float(psnr_hu(x * scale, target, lo, hi).sum())
    trials = [{"lambda": lam, "steps": k, "residual": r / count, "psnr": p / count}
              for (lam, k), (r, p) in totals.items()]
    own = {"residual": network[0] / count, "psnr": network[1] / count}
    best = choose(trials, floor / count, own)
    return {"lambda": best["lambda"], "steps": best["steps"], "floor": floor / count,
            "residual": best["residual"], "psnr": best["psnr"], "network": own,
            "trials": trials}
