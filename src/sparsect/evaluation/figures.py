"""Figure panels: reference, each method, error maps and predicted masks."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from sparsect.priors.classes import TISSUE_CLASSES  # noqa: E402

# A soft-tissue/lung compromise window: shows lung vessels and organ contrast.
DISPLAY_WINDOW = (-1000.0, 600.0)
ERROR_WINDOW = 200.0
TISSUE_COLOURS = ListedColormap(["black", "tab:cyan", "gold", "tab:red", "white"])


def panel(path: Path, reference: np.ndarray, images: dict[str, np.ndarray],
          masks: dict[str, np.ndarray], title: str) -> Path:
    """Writes a PNG with one row per slice.

    Args:
        reference: ``(S, H, W)`` full-dose slices in HU.
        images: method -> ``(S, H, W)`` reconstructions in HU.
        masks: label -> ``(S, H, W)`` tissue classes (e.g. full-dose and predicted).
    """
    columns = 1 + 2 * len(images) + len(masks)
    rows = reference.shape[0]
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.0 * rows + 0.4),
                             squeeze=False)
    for row in range(rows):
        cells = [("reference", reference[row], "gray", DISPLAY_WINDOW)]
        cells += [(name, image[row], "gray", DISPLAY_WINDOW) for name, image in images.items()]
        cells += [(f"|{name} - ref|", np.abs(image[row] - reference[row]), "magma",
                   (0.0, ERROR_WINDOW)) for name, image in images.items()]
        cells += [(name, classes[row], TISSUE_COLOURS, (0, len(TISSUE_CLASSES) - 1))
                  for name, classes in masks.items()]
        for ax, (label, image, cmap, (vmin, vmax)) in zip(axes[row], cells, strict=True):
            ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(label, fontsize=8)
    fig.suptitle(f"{title} (display {DISPLAY_WINDOW[0]:.0f}..{DISPLAY_WINDOW[1]:.0f} HU, "
                 f"errors 0..{ERROR_WINDOW:.0f} HU; masks: "
                 + ", ".join(TISSUE_CLASSES) + ")", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def residual_panel(path: Path, residual_maps: dict[str, np.ndarray], title: str) -> Path:
    """Sinogram residuals ``A x - y`` (views x detectors), one column per method.

    Where a network disagrees with the measured data it has invented (or
    removed) structure; the full-dose reference shows the noise floor.
    """
    methods = list(residual_maps)
    rows = next(iter(residual_maps.values())).shape[0]
    scale = float(np.quantile(np.abs(residual_maps[methods[0]]), 0.99)) or 1.0
    fig, axes = plt.subplots(rows, len(methods), figsize=(2.2 * len(methods), 1.8 * rows + 0.5),
                             squeeze=False)
    for row in range(rows):
        for ax, method in zip(axes[row], methods, strict=True):
            ax.imshow(residual_maps[method][row], cmap="coolwarm", vmin=-scale, vmax=scale,
                      aspect="auto", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(method, fontsize=8)
    fig.suptitle(f"{title} (rows: views, columns: detector bins; +-{scale:.3f})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
