"""FBP reconstruction filters: names shared with ASTRA and their frequency responses.

ASTRA's own FBP (CPU parallel beam, CUDA) takes the names directly as its
``FilterType`` option; the CPU fan-beam FBP in :mod:`.fanbeam` filters with
:func:`filter_sinogram`. The windows follow the usual definitions (those of
ASTRA and scikit-image), with ``nu`` the frequency in cycles per bin, Nyquist 0.5.
"""

from __future__ import annotations

import numpy as np

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hann")


def check_filter(name: str) -> str:
    """Returns ``name`` if it is a supported filter, else raises ``ValueError``."""
    if name not in FILTERS:
        raise ValueError(f"Unknown FBP filter {name!r}; choose one of {', '.join(FILTERS)}.")
    return name


def _ramp(size: int) -> np.ndarray:
    # Ramp built from the band-limited spatial kernel (Kak & Slaney eq. 3.61:
    # h(0) = 1/4, h(n odd) = -1/(pi n)^2, in units of 1/bin^2) rather than |nu|
    # sampled in frequency: the latter has zero DC gain and, with zero padding,
    # shifts the reconstructed grey levels.
    n = np.concatenate([np.arange(1, size // 2 + 1, 2), np.arange(size // 2 - 1, 0, -2)])
    kernel = np.zeros(size)
    kernel[0] = 0.25
    kernel[1::2] = -1.0 / (np.pi * n) ** 2
    return np.real(np.fft.fft(kernel))


def frequency_response(name: str, size: int) -> np.ndarray:
    """Filter response on ``np.fft.fftfreq(size)`` (``size`` even), per unit bin spacing.

    Returns:
        ``(size,)`` real response; divide the filtered data by the bin spacing in
        mm to get 1/mm.
    """
    check_filter(name)
    response = _ramp(size)
    nu = np.fft.fftfreq(size)
    if name == "shepp-logan":
        response *= np.sinc(nu)
    elif name == "cosine":
        response *= np.cos(np.pi * nu)
    elif name == "hann":
        response *= 0.5 * (1.0 + np.cos(2.0 * np.pi * nu))
    return response


def filter_sinogram(sinogram: np.ndarray, name: str, spacing: float) -> np.ndarray:
    """Ramp-filters each row of ``sinogram`` (views, bins) sampled every ``spacing`` mm.

    Zero-padded to at least twice the row length so the circular FFT convolution
    does not wrap around. Returns float64, units of the input per mm.
    """
    bins = sinogram.shape[-1]
    size = max(64, int(2 ** np.ceil(np.log2(2 * bins))))
    spectrum = np.fft.rfft(sinogram, n=size, axis=-1)
    response = frequency_response(name, size)[: size // 2 + 1]
    # The kernel is in 1/bin^2; times the convolution's bin width it gives 1/spacing.
    return np.fft.irfft(spectrum * response, n=size, axis=-1)[..., :bins] / spacing
