"""Applying a trained model to new data: the one path from FBP slices to HU images.

``evaluate``, ``sparsect reconstruct``, the registered pyfunc model and the
benchmarks all call :func:`predict`, so what is scored is what is served. It
does what the network's inputs need and what training did:

- batching (``batch_size`` slices per call; results do not depend on it beyond
  float rounding);
- 2.5D context: each slice's axial neighbours as channels, never crossing into
  another subject (``index``), repeating the edge slice at a volume's ends;
- the prior input: nothing for ``none`` and ``predicted`` (the network predicts
  its own), HU-threshold classes of the FBP itself for ``threshold`` (as the
  ``simulate`` stage computes them for training), and the full-dose classes for
  ``oracle``, which must be passed explicitly and are refused for any other model
  (an upper bound cannot be applied to new data).

``sinogram`` is the measurements the FBP was made from: the image-domain variants
of the table do not read it, the learned iterative ones (``operator: true``) and the
data-consistency step (``data_consistency=True``, :mod:`sparsect.models.consistency`)
do, on the CT operator of the geometry recorded in the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sparsect.data.datamodule import neighbour_table
from sparsect.errors import InputError
from sparsect.models.consistency import conjugate_gradient, conjugate_gradient_to_floor
from sparsect.models.module import ReconModule
from sparsect.priors.masks import one_hot, tissue_masks_from_hu
from sparsect.priors.organs import scan_prior

BATCH_SIZE = 16
MIRROR_AVERAGE = True
"""Average the network's output with its output for the left-right mirrored slices
(mirrored back). Training flips slices at random, and for a symmetric set of view
angles (parallel beam over 180 degrees, a full fan-beam turn) the mirrored FBP's streaks
are those of a mirrored scan, so both passes are valid estimates and their mean has
less variance. Chosen on the validation split (60 views, sg_unet, default make run
data): one pass 39.37 dB, mirror average 39.57 dB, average over all four flips 39.52 dB;
on the real scans of realct/ it adds 0.09 to 0.15 dB inside the body."""


@dataclass
class Prediction:
    """``images``: ``(N, H, W)`` float32 HU; ``classes``: ``(N, H, W)`` uint8 tissue
    classes predicted by the network's segmentation head (None without one)."""

    images: np.ndarray
    classes: np.ndarray | None
    consistent: np.ndarray | None = None
    """``(N, H, W)`` the images after the model's data-consistency step (``+dc``), when
    asked for."""


def volume_index(count: int) -> list[tuple[str, int]]:
    """The index of ``count`` consecutive axial slices of one volume."""
    return [("volume", z) for z in range(count)]


def prior_classes(prior: str, fbp_hu: np.ndarray,
                  full_dose_classes: np.ndarray | None) -> np.ndarray | None:
    """The class map a model with ``prior`` is given for the slices ``fbp_hu``.

    Raises:
        InputError: an oracle model without full-dose classes.
        ValueError: full-dose classes offered to any other model (they would leak).
    """
    if prior == "oracle":
        if full_dose_classes is None:
            raise InputError("Oracle models read full-dose masks, which new data do not have: "
                             "use a deployable model (unet or sg_unet).")
        return np.asarray(full_dose_classes)
    if full_dose_classes is not None:
        raise ValueError(f"full-dose classes given to a model with prior '{prior}': only the "
                         "oracle (an upper bound) may read them")
    if prior == "threshold":
        return tissue_masks_from_hu(np.asarray(fbp_hu, np.float32))
    return None


@torch.no_grad()
def predict(module: ReconModule, fbp_hu: np.ndarray, *, index: list | None = None,
            full_dose_classes: np.ndarray | None = None, sinogram: np.ndarray | None = None,
            geometry: Any = None, batch_size: int = BATCH_SIZE,
            mirror_average: bool = MIRROR_AVERAGE,
            slices: np.ndarray | list[int] | None = None,
            data_consistency: bool = False, prior_scan: np.ndarray | None = None,
            prior_organs: np.ndarray | None = None,
            dc_floor: np.ndarray | str | None = None) -> Prediction:
    """Runs ``module`` on ``(N, H, W)`` FBP slices in HU.

    Args:
        index: ``(subject, z)`` of every slice (2.5D neighbours stay within a
            subject); None: the slices are one volume, in axial order.
        full_dose_classes: ``(N, H, W)`` full-dose tissue classes, for oracle models only.
        sinogram: ``(N, views, detectors)`` measurements the FBP was made from (on the
            geometry the model records); needed by models that read the sinogram and
            by ``data_consistency``.
        geometry: their :class:`~sparsect.physics.Geometry`; checked against the
            model's when given.
        batch_size: slices per network call.
        mirror_average: also run the left-right mirrored slices and average (see
            :data:`MIRROR_AVERAGE`); twice the network's cost.
        slices: reconstruct only these slices (default: all), in this order; their
            2.5D neighbours still come from the whole stack. ``full_dose_classes``
            stays ``(N, H, W)``.
        data_consistency: also return the images after the data-consistency step the
            model's checkpoint records (``Prediction.consistent``).
        prior_scan, prior_organs: ``(N, H, W)`` the earlier scan registered to the slices
            (HU) and its organ classes, for ``prior: scan`` models only.
        dc_floor: stop the data-consistency step of each slice at its own residual floor
            (:func:`~sparsect.models.consistency.conjugate_gradient_to_floor`, the
            recorded ``steps`` at most): ``"scan"`` estimates the floors from the
            sinograms (:func:`dc_floors`), an array gives them (``(len(slices),)``);
            None: the recorded step count for every slice.
    """
    fbp_hu = np.asarray(fbp_hu, np.float32)
    if fbp_hu.ndim != 3:
        raise ValueError(f"fbp_hu must be (N, H, W), got shape {fbp_hu.shape}")
    if sinogram is not None and len(sinogram) != len(fbp_hu):
        raise ValueError(f"{len(sinogram)} sinograms for {len(fbp_hu)} FBP slices")
    index = volume_index(len(fbp_hu)) if index is None else index
    if len(index) != len(fbp_hu):
        raise ValueError(f"index has {len(index)} entries for {len(fbp_hu)} slices")
    neighbours = neighbour_table(index, module.context)
    picks = np.arange(len(fbp_hu)) if slices is None else np.asarray(slices, dtype=np.int64)
    reads_sinogram = module.needs_operator or data_consistency
    if reads_sinogram:
        _check_measurements(module, sinogram, geometry, data_consistency)
    mirror_average = mirror_average and not module.needs_operator
    classes_in = prior_classes(str(module.hparams.prior), fbp_hu, full_dose_classes)
    reads_scan = str(module.hparams.prior) == "scan"
    if reads_scan != (prior_scan is not None) or (prior_scan is None) != (prior_organs is None):
        name = module.hparams.variant or "this model"
        raise InputError(f"Model '{name}' reads an earlier scan and its organ map: give both "
                         "(--prior-scan)." if reads_scan else
                         f"Model '{name}' reads no earlier scan: reconstruct without one.")
    if reads_scan and not (np.shape(prior_scan) == np.shape(prior_organs) == fbp_hu.shape):
        raise ValueError(f"the prior scan {np.shape(prior_scan)} and its organ map "
                         f"{np.shape(prior_organs)} must match the FBP {fbp_hu.shape}")
    if data_consistency and isinstance(dc_floor, str):
        if dc_floor != "scan":
            raise ValueError(f"dc_floor must be 'scan', an array or None, got {dc_floor!r}")
        dc_floor = dc_floors(module, np.asarray(sinogram)[picks])
    if dc_floor is not None and len(dc_floor) != len(picks):
        raise ValueError(f"{len(dc_floor)} floors for {len(picks)} slices")
    images, classes, consistent = [], [], []
    for start in range(0, len(picks), batch_size):
        rows = picks[start:start + batch_size]
        fbp = torch.from_numpy(fbp_hu[neighbours[rows]]).to(module.device)
        prior = None
        if classes_in is not None:
            prior = torch.from_numpy(one_hot(classes_in[rows])).to(module.device)
        elif reads_scan:
            prior = torch.from_numpy(scan_prior(prior_scan[rows], prior_organs[rows])
                                     ).to(module.device)
        measured = (torch.from_numpy(np.asarray(sinogram[rows], np.float32))
                    if reads_sinogram else None)
        recon, probs = module.reconstruct_hu(fbp, prior, measured)
        if mirror_average:
            mirrored, mirrored_probs = module.reconstruct_hu(
                fbp.flip(-1), None if prior is None else prior.flip(-1))
            recon = (recon + mirrored.flip(-1)) / 2
            if probs is not None:
                probs = (probs + mirrored_probs.flip(-1)) / 2
        images.append(recon[:, 0].cpu().numpy())
        if probs is not None:
            classes.append(probs.argmax(dim=1).cpu().numpy().astype(np.uint8))
        if data_consistency:
            settings, scale = module.hparams.dc, float(module.hparams.hu_scale)
            steps = int(settings["steps"])
            if steps == 0:  # the network was already at the noise floor on validation
                consistent.append(images[-1])
                continue
            y = module.sinogram_units(measured)
            if dc_floor is not None:
                operator = module.operator()
                ones = torch.ones(1, *operator.geometry.image_shape, device=y.device)
                image, _ = conjugate_gradient_to_floor(
                    recon[:, 0] / scale, y, operator, float(settings["lambda"]), steps,
                    torch.as_tensor(np.asarray(dc_floor)[start:start + batch_size]),
                    operator.forward(ones))
            else:
                image = conjugate_gradient(recon[:, 0] / scale, y, module.operator(),
                                           float(settings["lambda"]), steps)[steps]
            consistent.append((image * scale).cpu().numpy())
    return Prediction(np.concatenate(images), np.concatenate(classes) if classes else None,
                      np.concatenate(consistent) if consistent else None)


def dc_floors(module: ReconModule, sinogram: np.ndarray) -> np.ndarray:
    """Each slice's residual floor (:func:`sparsect.physics.noisefloor.residual_floor`:
    noise from the sinogram's own air bins, the model's recorded ``I0`` where a stack has
    too few, and the mismatch of the recorded simulation grid)."""
    from sparsect.physics.geometry import Geometry
    from sparsect.physics.noisefloor import residual_floor

    noise = dict(module.hparams.get("noise") or {})
    upsample = int(dict(module.hparams.get("acquisition") or {}).get("upsample", 2))
    geometry = Geometry.from_dict(dict(module.hparams.geometry))
    return residual_floor(np.asarray(sinogram, np.float32), geometry, upsample=upsample,
                          fallback_i0=noise.get("i0")).floor


def _check_measurements(module: ReconModule, sinogram: np.ndarray | None, geometry: Any,
                        data_consistency: bool) -> None:
    """What reading the sinogram needs: the sinogram, on the model's geometry, and for
    ``data_consistency`` a step chosen after training."""
    name = module.hparams.variant or "this model"
    if data_consistency and not module.hparams.dc:
        raise InputError(f"Model '{name}' records no data-consistency step: retrain it with "
                         "model.dc_steps set, or reconstruct without it.")
    if sinogram is None:
        raise InputError(f"Model '{name}' reads the measured sinogram"
                         f"{' for its data-consistency step' if not module.needs_operator else ''}"
                         ": pass the sinogram the FBP was made from.")
    if geometry is not None and module.hparams.geometry and \
            type(geometry).from_dict(dict(module.hparams.geometry)) != geometry:
        raise InputError(f"The sinogram's geometry differs from the one model '{name}' was "
                         "trained for: simulate or acquire it with the model's geometry.")
