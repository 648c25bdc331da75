"""LightningModule for the residual UNet and the semantically-guided UNet.

Intensities inside the network are ``hu / 1000`` (water 0, air -1, bone about
+1): zero-centred on soft tissue, where the diagnostic contrast is, and
recorded in the checkpoint as ``hu_scale`` so inference can undo it.

Prior variants:
    none       - plain residual UNet (the FBPConvNet baseline, ``arch=unet``).
    predicted  - ``sg_unet``: the segmentation decoder predicts tissue
                 probabilities from the FBP and conditions the reconstruction.
                 Full-dose masks are only a training target.
    threshold  - ``sg_unet`` conditioned on classical HU-threshold masks of the FBP.
    oracle     - ``sg_unet`` conditioned on the full-dose masks: an upper bound,
                 never a deployable result.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from sparsect.evaluation.metrics import mean_dice, psnr_hu, ssim_hu
from sparsect.models.losses import soft_dice_loss, ssim
from sparsect.models.unet import build_model, count_parameters, matched_unet_channels

HU_SCALE = 1000.0
PRIOR_VARIANTS = ("none", "predicted", "threshold", "oracle")


class ReconModule(pl.LightningModule):
    """Trains one reconstruction model; see the module docstring for the variants.

    Args:
        prior: one of ``PRIOR_VARIANTS``; ``none`` builds a UNet, the others an SGUNet.
        channels, depth, seg_channels: architecture (see :mod:`sparsect.models.unet`).
        loss: weights ``l1``, ``ssim``, ``ce``, ``dice``, ``region`` of the loss terms.
        region_weights: per tissue class weight of the region-weighted L1 term.
        hu_min, hu_max: window of the validation PSNR/SSIM (fixed data range).
        match_params: widen the plain UNet (``prior=none``) to the parameter count
            of the semantically-guided one, so comparisons are at equal capacity.
        geometry, noise: the acquisition the model was trained for (recorded in
            the checkpoint; inference checks it).
    """

    def __init__(self, prior: str = "predicted", channels: int = 16, depth: int = 4,
                 seg_channels: int = 8, in_channels: int = 1, num_classes: int = 5,
                 lr: float = 2e-3, weight_decay: float = 1e-4,
                 loss: dict[str, float] | None = None, hu_min: float = -1000.0,
                 hu_max: float = 2000.0, hu_scale: float = HU_SCALE,
                 match_params: bool = True,
                 region_weights: tuple[float, ...] = (0.0, 1.0, 1.0, 2.0, 1.0),
                 geometry: dict[str, Any] | None = None,
                 noise: dict[str, Any] | None = None) -> None:
        super().__init__()
        if prior not in PRIOR_VARIANTS:
            raise ValueError(f"unknown prior '{prior}': choose one of {PRIOR_VARIANTS}")
        self.save_hyperparameters()
        # defaults as in conf/trainer/cpu.yaml (chosen on validation there)
        self.loss_weights = {"l1": 1.0, "ssim": 0.1, "ce": 0.005, "dice": 0.005, "region": 0.0,
                             **(loss or {})}
        if prior == "none":
            if match_params:  # same capacity as the semantically-guided model
                reference = build_model("sg_unet", channels, depth, seg_channels, in_channels,
                                        num_classes)
                channels = matched_unet_channels(count_parameters(reference), in_channels,
                                                 depth, channels)
            self.net = build_model("unet", channels, depth, in_channels=in_channels)
        else:
            arch = "sg_unet" if prior == "predicted" else "sg_unet_external"
            self.net = build_model(arch, channels, depth, seg_channels, in_channels, num_classes)

    @property
    def uses_segmentation(self) -> bool:
        return self.hparams.prior != "none"

    def forward(self, fbp: torch.Tensor, prior_probs: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``fbp (B, C, H, W)`` normalised -> ``(reconstruction (B,1,H,W), seg_logits | None)``."""
        if not self.uses_segmentation:
            return self.net(fbp), None
        external = prior_probs if self.hparams.prior in ("threshold", "oracle") else None
        return self.net(fbp, external)

    def reconstruct_hu(self, fbp_hu: torch.Tensor, prior_probs: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """HU in, HU out: ``(B, C, H, W)`` -> ``((B, 1, H, W), class probabilities | None)``."""
        recon, logits = self(fbp_hu / self.hparams.hu_scale, prior_probs)
        probs = None if logits is None else logits.softmax(dim=1)
        return recon * self.hparams.hu_scale, probs

    def _losses(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Any]:
        recon, logits = self(batch["fbp"], batch.get("prior_probs"))
        target = batch["target"]
        w = self.loss_weights
        terms = {"l1": F.l1_loss(recon, target)}
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

    def on_fit_start(self) -> None:
        # channels_last lets cuDNN pick its fastest (NHWC, tensor-core) convolutions
        if self.device.type == "cuda":
            self.to(memory_format=torch.channels_last)

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
