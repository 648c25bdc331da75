"""Elementary functions that give the same bits on every x86-64 processor.

numpy picks its kernels for ``sin``, ``cos``, ``arctan2``, ``exp``, ``hypot``
and ``power`` at run time from the processor's SIMD extensions (SSE4, AVX2,
AVX-512), and so does glibc for the scalar ``math`` functions (with or without
FMA). The kernels agree to an ulp or two, not to the bit; a generator that
decides inside/outside or rounds HU after such a function then writes other
voxels on another machine. The phantom generator uses these functions
instead. They are built from IEEE-754 operations that are correctly rounded
on every machine (``+ - * /``, ``sqrt``, ``rint``, ``floor``, ``ldexp``,
``frexp``, comparisons), each one a separate numpy ufunc call, so no compiler
can fuse them into an FMA: the result depends on the inputs only.

Accuracy is a few ulp of float64 (about 1e-15 relative), far beyond what the
anatomy needs; the point is that it is the *same* few ulp everywhere.

>>> import numpy as np
>>> float(abs(cos(np.array([1.0]))[0] - 0.5403023058681398)) < 1e-15
True
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["arctan2", "cos", "exp", "hypot", "log", "normal", "pow_positive", "sin", "wrap_angle"]

PI = 3.141592653589793  # nearest float64 to pi
TWO_PI = 2.0 * PI

# pi/2 split into three parts whose products with small integers are exact
# (Cody-Waite reduction): x - k pi/2 keeps its accuracy for |x| up to about 1e6.
_PIO2_1 = 1.5707963267341256e00
_PIO2_2 = 6.0771005065061922e-11
_PIO2_3 = 2.0222662487959506e-21
_TWO_OVER_PI = 0.6366197723675814
# ln 2 split the same way (the high part has 32 significant bits).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.4426950408889634
_SQRT_HALF = 0.7071067811865476

# Taylor coefficients 1/n! with alternating signs, highest order first (Horner).
# (math.factorial is exact: n! overflows int64 from n = 21.)
_SIN_COEFFS = tuple((-1.0) ** k / math.factorial(2 * k + 1) for k in range(11, 0, -1))
_COS_COEFFS = tuple((-1.0) ** k / math.factorial(2 * k) for k in range(11, 0, -1))
_EXP_COEFFS = tuple(1.0 / math.factorial(n) for n in range(17, 1, -1))


def _array(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _horner(t: np.ndarray, coeffs: tuple[float, ...]) -> np.ndarray:
    acc = np.full_like(t, coeffs[0])
    for c in coeffs[1:]:
        acc = acc * t + c
    return acc


def _reduce_half_pi(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x = k pi/2 + r`` with ``|r| <= pi/4`` (approximately); returns ``(r, k mod 4)``."""
    k = np.rint(x * _TWO_OVER_PI)
    r = ((x - k * _PIO2_1) - k * _PIO2_2) - k * _PIO2_3
    return r, np.mod(k, 4.0).astype(np.int8)


def _sin_cos_kernel(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sin and cos of ``|r| <= pi/4`` by their Taylor series (error below 1e-17)."""
    r2 = r * r
    sin_r = r + r * r2 * _horner(r2, _SIN_COEFFS)
    cos_r = 1.0 + r2 * _horner(r2, _COS_COEFFS)
    return sin_r, cos_r


def sin(x) -> np.ndarray:
    """Sine of ``x`` (rad), float64."""
    r, quadrant = _reduce_half_pi(_array(x))
    s, c = _sin_cos_kernel(r)
    return np.choose(quadrant, (s, c, -s, -c))


def cos(x) -> np.ndarray:
    """Cosine of ``x`` (rad), float64."""
    r, quadrant = _reduce_half_pi(_array(x))
    s, c = _sin_cos_kernel(r)
    return np.choose(quadrant, (c, -s, -c, s))


def _atan_unit(a: np.ndarray) -> np.ndarray:
    """arctan of ``0 <= a <= 1``.

    Three halvings of the angle, ``atan(a) = 2 atan(a / (1 + sqrt(1 + a^2)))``,
    bring the argument below tan(pi/32) = 0.0985, where 9 terms of the series
    ``t - t^3/3 + t^5/5 - ...`` are exact to float64.
    """
    t = a
    for _ in range(3):
        t = t / (1.0 + np.sqrt(1.0 + t * t))
    t2 = t * t
    series = np.full_like(t, 1.0 / 17.0)
    for n in range(15, 0, -2):
        series = 1.0 / n - t2 * series  # 1 - t^2/3 + t^4/5 - ... once n reaches 1
    return 8.0 * (t * series)


def arctan2(y, x) -> np.ndarray:
    """Angle of the point ``(x, y)`` in ``(-pi, pi]``, as ``numpy.arctan2``."""
    y, x = np.broadcast_arrays(_array(y), _array(x))
    ay, ax = np.abs(y), np.abs(x)
    swap = ay > ax
    big = np.where(swap, ay, ax)
    small = np.where(swap, ax, ay)
    ratio = np.divide(small, big, out=np.zeros_like(big), where=big > 0)
    angle = _atan_unit(ratio)
    angle = np.where(swap, PI / 2 - angle, angle)  # first quadrant, 0 .. pi/2
    angle = np.where(x < 0, PI - angle, angle)
    return np.where((y < 0) | ((y == 0) & np.signbit(y)), -angle, angle)


def wrap_angle(x) -> np.ndarray:
    """``x`` (rad) wrapped into ``[-pi, pi)``."""
    x = _array(x)
    return x - TWO_PI * np.floor((x + PI) / TWO_PI)


def exp(x) -> np.ndarray:
    """Exponential of ``x``, float64 (``x`` between about -700 and 700)."""
    x = _array(x)
    k = np.rint(x * _INV_LN2)
    r = (x - k * _LN2_HI) - k * _LN2_LO  # |r| <= ln2 / 2
    poly = 1.0 + r + r * r * _horner(r, _EXP_COEFFS)
    return np.ldexp(poly, k.astype(np.int32))


def log(x) -> np.ndarray:
    """Natural logarithm of ``x > 0``, float64 (``-inf`` at 0, ``nan`` below)."""
    x = _array(x)
    positive = x > 0
    mantissa, exponent = np.frexp(np.where(positive, x, 1.0))  # x = m 2^e, 0.5 <= m < 1
    low = mantissa < _SQRT_HALF
    mantissa = np.where(low, mantissa * 2.0, mantissa)  # sqrt(1/2) <= m < sqrt(2)
    e = (exponent - low).astype(np.float64)
    # log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.1716: 12 odd terms.
    s = (mantissa - 1.0) / (mantissa + 1.0)
    s2 = s * s
    series = np.full_like(s, 1.0 / 25.0)
    for n in range(23, 0, -2):
        series = series * s2 + 1.0 / n
    result = (e * _LN2_HI + 2.0 * s * series) + e * _LN2_LO
    return np.where(positive, result, np.where(x == 0, -np.inf, np.nan))


def pow_positive(base, exponent: float) -> np.ndarray:
    """``base ** exponent`` for ``base >= 0`` (0 ** positive = 0, 0 ** negative = inf)."""
    base = _array(base)
    zero = base == 0
    value = exp(exponent * log(np.where(zero, 1.0, base)))
    return np.where(zero, 0.0 if exponent > 0 else np.inf, value)


def hypot(x, y) -> np.ndarray:
    """``sqrt(x^2 + y^2)`` (no overflow guard: for coordinates in mm)."""
    x, y = _array(x), _array(y)
    return np.sqrt(x * x + y * y)


def normal(rng: np.random.Generator, size=None, loc: float = 0.0, scale: float = 1.0):
    """Gaussian samples from ``rng``'s uniform doubles by the Box-Muller transform.

    ``Generator.normal`` goes through glibc's ``exp``/``log`` in its rare
    ziggurat branches, whose FMA and non-FMA variants may differ in the last
    bit; the uniform doubles (53 random bits each) are exact everywhere.

    Returns:
        a Python float when ``size`` is None, else a float64 array of that shape.
    """
    count = 1 if size is None else int(np.prod(size))
    pairs = (count + 1) // 2
    u1 = 1.0 - rng.random(pairs)  # in (0, 1]: log(u1) is finite
    u2 = rng.random(pairs)
    radius = np.sqrt(-2.0 * log(u1))
    angle = TWO_PI * u2
    samples = np.concatenate([radius * cos(angle), radius * sin(angle)])[:count]
    samples = loc + scale * samples
    return float(samples[0]) if size is None else samples.reshape(size)
