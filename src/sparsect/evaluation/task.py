"""Task-based image quality: lesion contrast, a channelized Hotelling observer, invented
and lost structure, and the statistics that go with them.

Every quantity is computed per lesion or per subject, and every confidence interval
resamples *subjects* (clusters), never lesions or slices: lesions of one patient share
its anatomy and reconstruction, so they are not independent.

- Contrast recovery ``CR = mean_L(x_present - x_absent) / mean_L(lesion)`` over the
  lesion's pixels ``L`` (coverage >= 0.5 on its centre slice), averaged over noise
  realisations; reported as ``|CR - 1|`` (an overshoot also gives CR > 1).
- CNR ``= |mean_L(x_present - x_absent)| / SD_B(x_absent)``, ``B`` a ring around the
  lesion inside its host organ: signal over the background's noise and texture.
- The channelized Hotelling observer (CHO) reads a square region around each lesion
  through Laguerre-Gauss channels; its template is estimated on one set of noise
  realisations and applied to another, giving ``d'`` and the AUC (Mann-Whitney).
- Invented and lost structure: connected regions of ``|x - reference|`` above a
  threshold (three standard deviations of a full-view full-dose FBP's noise) and larger
  than a few pixels; a region where ``x`` carries more local detail than the reference
  is invented (a streak, a false edge), the reverse is lost (a vessel or lesion blurred
  away).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.special import eval_laguerre

MIN_STRUCTURE_PIXELS = 5
"""A region of ``|x - reference|`` counts as a structure from this many pixels (larger
than 4, 8-connected)."""
STRUCTURE_SIGMAS = 3.0
"""Threshold on ``|x - reference|`` in standard deviations of the full-view FBP's noise."""
DETAIL_SIGMA_PX = 2.0
"""Gaussian (pixels) whose residual ``img - G * img`` measures local detail."""


def laguerre_gauss_channels(size: int, width: float, count: int = 10) -> np.ndarray:
    """``(count, size * size)`` Laguerre-Gauss channels centred on a ``size`` x ``size`` ROI:
    ``u_j(r) = sqrt(2) / a exp(-pi r^2 / a^2) L_j(2 pi r^2 / a^2)``, ``a`` = ``width``.

    >>> u = laguerre_gauss_channels(33, 5.0, 4)
    >>> bool(np.allclose(u @ u.T, np.eye(4), atol=0.02))
    True
    """
    centre = (size - 1) / 2
    y, x = np.mgrid[:size, :size] - centre
    r2 = (x * x + y * y) / width**2
    gauss = np.sqrt(2.0) / width * np.exp(-np.pi * r2)
    return np.stack([gauss * eval_laguerre(j, 2 * np.pi * r2) for j in range(count)]
                    ).reshape(count, -1)


def patches(images: np.ndarray, centres: list[tuple[int, int, int]], size: int) -> np.ndarray:
    """``(len(centres), size * size)`` square regions of ``images`` ``(N, H, W)`` around
    ``(n, row, col)`` centres (edge values beyond the border)."""
    half = size // 2
    padded = np.pad(images, ((0, 0), (half, half), (half, half)), mode="edge")
    return np.stack([padded[n, r:r + size, c:c + size].reshape(-1) for n, r, c in centres])


def hotelling(train_present: np.ndarray, train_absent: np.ndarray) -> np.ndarray:
    """The Hotelling template on channel outputs ``(n, channels)`` of each class."""
    scatter = 0.5 * (np.cov(train_present, rowvar=False) + np.cov(train_absent, rowvar=False))
    difference = train_present.mean(axis=0) - train_absent.mean(axis=0)
    return np.linalg.lstsq(scatter, difference, rcond=None)[0]


def d_prime(present: np.ndarray, absent: np.ndarray) -> float:
    """Detectability of observer scores: mean difference over the pooled SD."""
    pooled = np.sqrt(0.5 * (np.var(present, ddof=1) + np.var(absent, ddof=1)))
    return float((np.mean(present) - np.mean(absent)) / pooled) if pooled > 0 else float("nan")


def auc(present: np.ndarray, absent: np.ndarray) -> float:
    """Area under the ROC curve of observer scores (Mann-Whitney; ties count half).

    >>> auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])), auc(np.ones(3), np.ones(2))
    (1.0, 0.5)
    """
    present, absent = np.asarray(present, float), np.asarray(absent, float)
    greater = (present[:, None] > absent[None, :]).sum()
    ties = (present[:, None] == absent[None, :]).sum()
    return float((greater + 0.5 * ties) / (present.size * absent.size))


def cluster_bootstrap(statistic, clusters: np.ndarray, resamples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of ``statistic(rows)`` resampling whole clusters with replacement.

    ``clusters`` is the cluster (subject) of each row; ``statistic`` takes the row
    indices of a resample (a cluster drawn twice contributes its rows twice).

    >>> values = np.arange(10.0); groups = np.repeat(np.arange(5), 2)
    >>> lo, hi = cluster_bootstrap(lambda rows: values[rows].mean(), groups)
    >>> bool(lo < 4.5 < hi)
    True
    """
    clusters = np.asarray(clusters)
    names = np.unique(clusters)
    members = [np.flatnonzero(clusters == name) for name in names]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(names), len(names))])
        values.append(statistic(rows))
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def two_way_bootstrap(table: np.ndarray, resamples: int = 2000, seed: int = 0
                      ) -> np.ndarray:
    """Bootstrap means of a ``(subjects, seeds)`` table resampling subjects and seeds
    independently (a cluster bootstrap over both factors); NaN cells are skipped."""
    table = np.asarray(table, float)
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for i in range(resamples):
        rows = rng.integers(0, table.shape[0], table.shape[0])
        cols = rng.integers(0, table.shape[1], table.shape[1])
        out[i] = np.nanmean(table[np.ix_(rows, cols)])
    return out


def holm(p_values: dict[str, float], alpha: float = 0.05) -> dict[str, dict[str, float]]:
    """Holm's step-down correction: per hypothesis its adjusted p-value and the CI level
    at which it is tested (``1 - alpha / (m - rank)``); a rejection needs every smaller
    p-value rejected too.

    >>> out = holm({"a": 0.01, "b": 0.04})
    >>> out["a"]["p_adjusted"], out["b"]["p_adjusted"], out["a"]["level"], out["b"]["level"]
    (0.02, 0.04, 0.975, 0.95)
    """
    order = sorted(p_values, key=p_values.get)
    m = len(order)
    out: dict[str, dict[str, float]] = {}
    running = 0.0
    for rank, name in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[name]))
        out[name] = {"p": float(p_values[name]), "p_adjusted": round(float(running), 12),
                     "level": 1 - alpha / (m - rank)}
    return out


def lesion_rois(lesion_hu: np.ndarray, host: np.ndarray, row: int, col: int,
                lesion_px_radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Lesion pixels (coverage >= 0.5 of the lesion's peak) and its background ring
    (2 to 5 pixels beyond its radius, in the host organ, off every lesion) on one
    ``(H, W)`` slice."""
    peak = np.abs(lesion_hu[row, col])
    inside = np.abs(lesion_hu) >= 0.5 * peak if peak > 0 else np.zeros_like(host)
    labelled, _ = ndimage.label(inside)
    inside = labelled == labelled[row, col] if inside[row, col] else inside
    rr, cc = np.mgrid[:lesion_hu.shape[0], :lesion_hu.shape[1]]
    distance = np.hypot(rr - row, cc - col)
    ring = ((distance > lesion_px_radius + 2) & (distance <= lesion_px_radius + 5) & host
            & (lesion_hu == 0))
    return inside, ring


def structures(image: np.ndarray, reference: np.ndarray, body: np.ndarray, sigma: float
               ) -> list[tuple[str, int]]:
    """Invented and lost structures of one ``(H, W)`` slice: ``(kind, pixels)`` for each
    8-connected region of ``|image - reference| > STRUCTURE_SIGMAS * sigma`` inside
    ``body`` with at least :data:`MIN_STRUCTURE_PIXELS` pixels; ``kind`` is ``"invented"``
    where the image has more local detail than the reference there, else ``"lost"``.

    >>> ref = np.zeros((32, 32)); body = np.ones((32, 32), bool)
    >>> streak = ref.copy(); streak[10, 4:20] = 100.0
    >>> structures(streak, ref, body, 10.0), structures(ref, streak, body, 10.0)
    ([('invented', 16)], [('lost', 16)])
    """
    difference = np.abs(np.asarray(image, float) - reference) > STRUCTURE_SIGMAS * sigma
    labelled, count = ndimage.label(difference & body, structure=np.ones((3, 3), bool))
    if count == 0:
        return []
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)
    detail_x = np.abs(image - ndimage.gaussian_filter(np.asarray(image, float), DETAIL_SIGMA_PX))
    detail_r = np.abs(reference - ndimage.gaussian_filter(np.asarray(reference, float),
                                                          DETAIL_SIGMA_PX))
    index = np.arange(1, count + 1)
    more = (ndimage.mean(detail_x, labelled, index) > ndimage.mean(detail_r, labelled, index))
    return [("invented" if more[i - 1] else "lost", int(sizes[i])) for i in index
            if sizes[i] >= MIN_STRUCTURE_PIXELS]
