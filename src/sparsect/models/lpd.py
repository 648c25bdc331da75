"""Learned Primal-Dual (Adler & Oektem, IEEE TMI 37(6), 2018) and its semantically-guided form.

An unrolled primal-dual scheme: ``iterations`` times, a small CNN updates a dual
(sinogram-domain) state from the projection of the current image and the measured
sinogram, then another small CNN updates the primal (image) state from the
backprojection of the dual state. Every iteration sees the measurements again through
the CT operator, so the network cannot drift far from what was measured, which a
post-processing UNet never checks.

Conventions here:

* images and sinograms are in the network's units (HU / 1000 for the pipeline):
  ``sinogram`` is ``y`` with ``A x = y`` for the operator ``A`` that is passed in
  (:class:`sparsect.models.module.ReconModule` converts measured line integrals);
* the operator is normalised by its spectral norm inside the network, as in the paper,
  so that the blocks see values of order one whatever the geometry;
* the primal state starts from the FBP (the centre slice of a 2.5D input), not from
  zero: the same information, and far fewer epochs to a useful model. The 2.5D
  neighbours (``in_channels`` > 1) enter every primal update as extra channels;
* ``channels`` is the width of the blocks (the paper's 32); a ``match_params`` entry
  of the variant table widens it like the UNets' width.

:class:`SGLearnedPrimalDual` adds the semantic prior of ``sg_unet``: a light UNet
segments the FBP into tissue classes, and their probabilities enter every primal
update (as channels), so the image updates know which tissue a pixel belongs to.
Its logits are returned for the auxiliary segmentation loss.

Cost: each iteration is one forward and one adjoint projection of the batch plus two
three-layer CNNs on the whole slice and sinogram (``scripts/bench_train.py`` gives the
time per step against the UNets'). The networks need whole slices: the sinogram
covers the whole slice, so training cannot crop.

Only ``torch`` is imported here; the operator is passed in at call time (any object
with ``forward``, ``adjoint`` and ``norm()``, e.g. :class:`sparsect.physics.operator.
CTOperator`), so the network builds on machines without ASTRA.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsect.models.unet import Decoder, Encoder


def _block(in_channels: int, width: int, out_channels: int) -> nn.Sequential:
    """Three 3x3 convolutions with PReLU (the paper's update blocks); the last starts at
    zero so that every update starts as the identity."""
    last = nn.Conv2d(width, out_channels, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.PReLU(width),
        nn.Conv2d(width, width, 3, padding=1), nn.PReLU(width),
        last,
    )


def _exact(project: Any, data: torch.Tensor) -> torch.Tensor:
    """A projection in float32 outside autocast (bf16 training on GPUs): the sparse
    product has no reduced-precision kernel, and line integrals need the precision."""
    with torch.autocast(data.device.type, enabled=False):
        return project(data.float())


class LearnedPrimalDual(nn.Module):
    """Learned Primal-Dual on the FBP and the measured sinogram.

    Args:
        in_channels: FBP slices given (1, or k for 2.5D; the centre one starts the primal).
        channels: width of every update block.
        iterations: unrolled primal-dual iterations.
        primal, dual: channels of the primal and dual states (memory of the scheme).

    ``forward(fbp, sinogram=y, operator=A)``: ``fbp (B, in_channels, H, W)``,
    ``y (B, views, bins)`` -> ``(B, 1, H, W)``.
    """

    needs_operator = True

    def __init__(self, in_channels: int = 1, channels: int = 32, iterations: int = 10,
                 primal: int = 5, dual: int = 5, prior_channels: int = 0) -> None:
        super().__init__()
        self.in_channels, self.primal, self.dual = in_channels, primal, dual
        extra = in_channels + prior_channels
        self.dual_blocks = nn.ModuleList(_block(dual + 2, channels, dual)
                                         for _ in range(iterations))
        self.primal_blocks = nn.ModuleList(_block(primal + 1 + extra, channels, primal)
                                           for _ in range(iterations))

    def unroll(self, fbp: torch.Tensor, sinogram: torch.Tensor, operator: Any,
               prior: torch.Tensor | None = None) -> torch.Tensor:
        norm = float(operator.norm())
        y = (sinogram / norm).unsqueeze(1)
        centre = fbp[:, self.in_channels // 2: self.in_channels // 2 + 1]
        context = fbp if prior is None else torch.cat([fbp, prior], dim=1)
        f = centre.expand(-1, self.primal, -1, -1)
        h = y.new_zeros(y.shape[0], self.dual, *y.shape[-2:])
        for dual_block, primal_block in zip(self.dual_blocks, self.primal_blocks, strict=True):
            projected = (_exact(operator.forward, f[:, 1]) / norm).unsqueeze(1)
            h = h + dual_block(torch.cat([h, projected.to(h.dtype), y], dim=1))
            back = (_exact(operator.adjoint, h[:, 0]) / norm).unsqueeze(1)
            f = f + primal_block(torch.cat([f, back.to(f.dtype), context], dim=1))
        return f[:, :1].contiguous()

    def forward(self, fbp: torch.Tensor, *, sinogram: torch.Tensor, operator: Any
                ) -> torch.Tensor:
        return self.unroll(fbp, sinogram, operator)


class SGLearnedPrimalDual(LearnedPrimalDual):
    """Learned Primal-Dual whose primal updates read tissue-class probabilities.

    Args:
        num_classes: tissue classes of the prior.
        depth, seg_channels: depth and width (first level) of the segmentation UNet,
            light on purpose: 82 k parameters at 8, against 85 k in the unrolled
            updates of width 16.
        predict_prior: segment the FBP (``sg_lpd``); False: the prior must be passed.

    ``forward(fbp, prior_probs=None, sinogram=y, operator=A)`` returns
    ``(reconstruction, seg_logits | None)``.
    """

    def __init__(self, in_channels: int = 1, channels: int = 32, iterations: int = 10,
                 primal: int = 5, dual: int = 5, num_classes: int = 5, depth: int = 4,
                 seg_channels: int = 8, predict_prior: bool = True) -> None:
        super().__init__(in_channels, channels, iterations, primal, dual,
                         prior_channels=num_classes)
        self.seg_encoder = Encoder(in_channels, seg_channels, depth) if predict_prior else None
        self.seg_decoder = (Decoder(self.seg_encoder.widths, out_width=seg_channels)
                            if predict_prior else None)
        self.seg_head = nn.Conv2d(seg_channels, num_classes, 1) if predict_prior else None

    def forward(self, fbp: torch.Tensor, prior_probs: torch.Tensor | None = None, *,
                sinogram: torch.Tensor, operator: Any
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = None
        if self.seg_encoder is not None:
            logits = self.seg_head(self.seg_decoder(self.seg_encoder(fbp)))
        if prior_probs is None:
            if logits is None:
                raise ValueError("this network has no segmentation branch: pass prior_probs")
            prior_probs = logits.softmax(dim=1)
        return self.unroll(fbp, sinogram, operator, prior_probs), logits
