"""LightningModule: trains and applies any network of the variant table.

Intensities inside the network are ``hu / HU_SCALE`` (water 0, air -1, bone
about +1): zero-centred on soft tissue, where the diagnostic contrast is, and
recorded in the checkpoint as ``hu_scale`` so inference can undo it.

The prior (see :mod:`sparsect.models.variants`) decides what the network is given:
    none       - the FBP only (``unet``: the FBPConvNet baseline).
    predicted  - ``sg_unet``: the segmentation decoder predicts tissue
                 probabilities from the FBP and conditions the reconstruction.
                 Full-dose masks are only a training target.
    threshold  - conditioned on classical HU-threshold masks of the FBP.
    oracle     - conditioned on the full-dose masks: an upper bound, never a
                 deployable result.
    scan       - an earlier full-dose scan of the patient registered to the slice, and
                 its organ map (follow-up imaging): read at test time as in training.

Everything applying the model to new data needs is recorded in the checkpoint's
hyper-parameters: the network spec, the prior, the intensity scale, the
acquisition (geometry, noise, simulation grid, FBP filter) and the HU clip of
the training data. Models are applied by :func:`sparsect.models.predict.predict`.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from sparsect.evaluation.metrics import mean_dice, psnr_hu, ssim_hu
from sparsect.models.losses import soft_dice_loss, ssim
from sparsect.models.variants import PRIORS, build_net
from sparsect.physics.units import HU_SCALE
from sparsect.priors.classes import NUM_TISSUE_CLASSES


class ReconModule(pl.LightningModule):
    """Trains one reconstruction model; see the module docstring for the priors.

    Args:
        net: the network's spec, ``{"_target_": class path, **constructor arguments}``
            (:func:`sparsect.models.variants.net_spec`).
        prior: one of ``PRIORS``.
        variant: the variant's name in the table (recorded for the registry).
        loss: weights ``l1``, ``ssim``, ``ce``, ``dice``, ``region`` of the loss terms.
        region_weights: per tissue class weight of the region-weighted L1 term.
        hu_min, hu_max: window of the validation PSNR/SSIM (fixed data range).
        geometry, noise: the acquisition the model was trained for (inference
            simulates and checks against it).
        acquisition: how the training data were made from the reference scans:
            ``upsample`` (simulation grid), ``filter`` (FBP filter) and ``hu_clip``;
            ``sinogram`` says what a sinogram holds for networks that read one:
            ``attenuation`` (default: line integrals of mu in 1/mm, as simulated) or
            ``linear`` (``A x`` of the image in its own units, e.g. a benchmark's).
        dc: the data-consistency step chosen on validation after training
            (:mod:`sparsect.models.consistency`): ``{"lambda": .., "steps": ..}``, or None.
    """

    def __init__(self, net: dict[str, Any], prior: str = "none", variant: str | None = None,
                 num_classes: int = NUM_TISSUE_CLASSES, lr: float = 2e-3,
                 weight_decay: float = 1e-4, loss: dict[str, float] | None = None,
                 hu_min: float = -1000.0, hu_max: float = 2000.0, hu_scale: float = HU_SCALE,
                 region_weights: tuple[float, ...] = (0.0, 1.0, 1.0, 2.0, 1.0),
                 geometry: dict[str, Any] | None = None, noise: dict[str, Any] | None = None,
                 acquisition: dict[str, Any] | None = None,
                 dc: dict[str, Any] | None = None) -> None:
        super().__init__()
        if prior not in PRIORS:
            raise ValueError(f"unknown prior '{prior}': choose one of {PRIORS}")
        self.save_hyperparameters()
        # defaults as in conf/trainer/cpu.yaml (chosen on validation there)
        self.loss_weights = {"l1": 1.0, "mse": 0.0, "ssim": 0.1, "ce": 0.005, "dice": 0.005,
                             "region": 0.0, **(loss or {})}
        self.net = build_net(net)

    @property
    def needs_operator(self) -> bool:
        """Whether the network reads the measured sinogram through the CT operator."""
        return bool(getattr(self.net, "needs_operator", False))

    def operator(self) -> Any:
        """The CT operator of the recorded geometry on this module's device (ASTRA's
        matrix, built once per process; imported here so that networks without an
        operator load on machines without ASTRA)."""
        from sparsect.physics.geometry import Geometry
        from sparsect.physics.operator import ct_operator

        if not self.hparams.geometry:
            raise ValueError("this model records no geometry: it cannot apply the CT operator")
        return ct_operator(Geometry.from_dict(dict(self.hparams.geometry)), self.device)

    def sinogram_units(self, sinogram: torch.Tensor) -> torch.Tensor:
        """Measured sinograms ``(B, views, bins)`` -> ``y`` with ``A x = y`` for ``x`` in the
        network's units: for line integrals of ``mu = mu_water (1 + x)``,
        ``y = sinogram / mu_water - A 1``."""
        mode = dict(self.hparams.acquisition or {}).get("sinogram", "attenuation")
        sinogram = sinogram.to(self.device, torch.float32)
        if mode == "linear":
            return sinogram / self.hparams.hu_scale
        if mode != "attenuation":
            raise ValueError(f"acquisition.sinogram '{mode}' is unknown: use attenuation or "
                             "linear")
        from sparsect.physics.units import MU_WATER_PER_MM

        operator = self.operator()
        ones = torch.ones(1, *operator.geometry.image_shape, device=self.device)
        return sinogram / MU_WATER_PER_MM - operator.forward(ones)

    @property
    def context(self) -> int:
        """Axial slices the network reads (1: 2D; k: the slice and its neighbours)."""
        return int(self.hparams.net.get("in_channels", 1))

    def forward(self, fbp: torch.Tensor, prior_probs: torch.Tensor | None = None,
                sinogram: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``fbp (B, C, H, W)`` normalised -> ``(reconstruction (B,1,H,W), seg_logits | None)``.

        ``sinogram (B, views, bins)``: the measurements (as recorded by the acquisition),
        required by networks that need the operator and ignored by the others."""
        kwargs = {}
        if self.needs_operator:
            if sinogram is None:
                raise ValueError(f"model '{self.hparams.variant}' reads the measured sinogram: "
                                 "pass it")
            kwargs = {"sinogram": self.sinogram_units(sinogram), "operator": self.operator()}
        if self.hparams.prior == "none":
            out = self.net(fbp, **kwargs)
        else:
            external = (prior_probs if self.hparams.prior in ("threshold", "oracle", "scan")
                        else None)
            out = self.net(fbp, external, **kwargs)
        return out if isinstance(out, tuple) else (out, None)

    def reconstruct_hu(self, fbp_hu: torch.Tensor, prior_probs: torch.Tensor | None = None,
                       sinogram: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """HU in, HU out: ``(B, C, H, W)`` -> ``((B, 1, H, W), class probabilities | None)``."""
        recon, logits = self(fbp_hu / self.hparams.hu_scale, prior_probs, sinogram)
        probs = None if logits is None else logits.softmax(dim=1)
        return recon * self.hparams.hu_scale, probs

    def _losses(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Any]:
        recon, logits = self(batch["fbp"], batch.get("prior_probs"), batch.get("sinogram"))
        target = batch["target"]
        w = self.loss_weights
        terms = {"l1": F.l1_loss(recon, target)}
        if w.get("mse", 0) > 0:
            # squared error: its minimiser is the posterior mean, which is what PSNR rewards
            # (L1's is the median)
            terms["mse"] = F.mse_loss(recon, target)
        if w["ssim"] > 0:
            # SSIM on the normalised images over the evaluation window's range
            data_range = (self.hparams.hu_max - self.hparams.hu_min) / self.hparams.hu_scale
            terms["ssim"] = 1 - ssim(recon, target, data_range=data_range)
        if w.get("region", 0) > 0:
            # |error| weighted per full-dose tissue class (e.g. favour soft tissue,
            # where diagnostic contrast is low); a training-only use of the masks
            weights = torch.as_tensor(self.hparams.region_weights, dtype=recon.dtype,
                                      device=recon.device)[batch["masks"]].unsqueeze(1)
            terms["region"] = (weights * (recon - target).abs()).mean()
        if logits is not None and self.hparams.prior == "predicted":
            terms["ce"] = F.cross_entropy(logits, batch["masks"])
            terms["dice"] = soft_dice_loss(logits, batch["masks"])
        terms["loss"] = sum(w[name] * value for name, value in terms.items())
        return terms, (recon, logits)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        terms, _ = self._losses(batch)
        size = batch["fbp"].shape[0]
        for name, value in terms.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, sync_dist=True,
                     batch_size=size, prog_bar=name == "loss")
        return terms["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        terms, (recon, logits) = self._losses(batch)
        size = batch["fbp"].shape[0]
        scale, lo, hi = self.hparams.hu_scale, self.hparams.hu_min, self.hparams.hu_max
        recon_hu, target_hu = recon * scale, batch["target"] * scale
        metrics = {
            "loss": terms["loss"],
            "psnr": psnr_hu(recon_hu, target_hu, lo, hi).mean(),
            "ssim": ssim_hu(recon_hu, target_hu, lo, hi).mean(),
        }
        if logits is not None and self.hparams.prior == "predicted":
            metrics["dice"] = torch.nanmean(
                mean_dice(logits.argmax(dim=1), batch["masks"], self.hparams.num_classes)
            )
        for name, value in metrics.items():
            self.log(f"val/{name}", value, on_step=False, on_epoch=True, sync_dist=True,
                     batch_size=size, prog_bar=name == "psnr")

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr,
                                      weight_decay=self.hparams.weight_decay)
        # one-cycle cosine schedule over the whole run: robust for short budgets
        total = self.trainer.estimated_stepping_batches
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.hparams.lr, total_steps=max(1, int(total)), pct_start=0.15
        )
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
