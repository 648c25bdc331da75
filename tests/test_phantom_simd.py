"""The built-in data do not depend on the processor's SIMD extensions.

numpy chooses its kernels at run time (SSE4 / AVX2 / AVX-512) and glibc its
``libm`` variants (with or without FMA); their results differ in the last bits.
The phantom generator must write the same bytes whichever are used. Each case
runs the generator on one subject in a fresh process with the extensions above
a level switched off (numpy: ``NPY_DISABLE_CPU_FEATURES``; glibc:
``GLIBC_TUNABLES=glibc.cpu.hwcaps=-...``), and compares the NIfTI bytes with a
run that has everything this CPU offers. A level the CPU lacks cannot be
exercised: that case is skipped and says so. Only x86-64 is claimed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

_CHILD = r"""
import hashlib, json, sys, tempfile
from pathlib import Path
from numpy._core._multiarray_umath import __cpu_features__
from sparsect.data.phantom import write_dataset

with tempfile.TemporaryDirectory() as folder:
    paths = write_dataset(Path(folder) / "data", subjects=1, seed=int(sys.argv[1]))
    files = sorted(Path(folder, "data").iterdir())
    digests = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
active = sorted(name for name, on in __cpu_features__.items() if on)
print(json.dumps({"files": digests, "active": active}))
"""

# One follow-up pair (sparsect.data.followup): its arrays and its lesion records.
_FOLLOWUP_CHILD = r"""
import hashlib, json, sys
from numpy._core._multiarray_umath import __cpu_features__
from sparsect.data.followup import ARRAYS, FollowupSpec, build_pairs
from sparsect.data.phantom import PhantomConfig

phantom = PhantomConfig(shape=(128, 128, 4), spacing_mm=(3.0, 3.0, 5.0), supersample=1,
                        slab_samples=1)
spec = FollowupSpec(subjects=1, slices=8, roi_px=9, diameter_mm=(8.0, 14.0), min_new_lesions=1)
pair = build_pairs(spec, phantom, 64, 6.0, (-1024.0, 3071.0), seed=int(sys.argv[1]))[0]
digests = {name: hashlib.sha256(getattr(pair, name).tobytes()).hexdigest() for name in ARRAYS}
digests["lesions"] = hashlib.sha256(json.dumps(pair.lesions).encode()).hexdigest()
active = sorted(name for name, on in __cpu_features__.items() if on)
print(json.dumps({"files": digests, "active": active}))
"""

SEED = 2024


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _numpy_dispatch() -> list[str]:
    from numpy._core._multiarray_umath import __cpu_dispatch__

    return list(__cpu_dispatch__)


# level -> (CPU flag that must be present, numpy targets to switch off, glibc hwcaps to mask)
_LEVELS = {
    "without AVX-512": (
        "avx512f",
        lambda targets: [t for t in targets if t == "X86_V4" or t.startswith("AVX512")],
        "-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD",
    ),
    "without AVX2 (and FMA)": (
        "avx2",
        lambda targets: list(targets),  # everything above numpy's baseline (x86-64-v2)
        "-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-AVX2,-FMA,-AVX",
    ),
}


def _run(env_extra: dict[str, str], child: str = _CHILD) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NPY_DISABLE_CPU_FEATURES", "NPY_ENABLE_CPU_FEATURES", "GLIBC_TUNABLES")
    }
    env.update(env_extra)
    result = subprocess.run(
        [sys.executable, "-c", child, str(SEED)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def everything_enabled() -> dict:
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"only x86-64 is claimed; this machine is {platform.machine()}")
    return _run({})


@pytest.fixture(scope="module")
def followup_everything_enabled() -> dict:
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"only x86-64 is claimed; this machine is {platform.machine()}")
    return _run({}, _FOLLOWUP_CHILD)


@pytest.mark.parametrize("level", list(_LEVELS))
def test_followup_pair_bytes_do_not_depend_on_simd_level(level, followup_everything_enabled):
    flag, numpy_targets, glibc_caps = _LEVELS[level]
    if flag not in _cpu_flags():
        pytest.skip(f"this CPU has no {flag}, so the follow-up pairs could not be made {level}")
    disabled = [t for t in numpy_targets(_numpy_dispatch())
                if t in followup_everything_enabled["active"]]
    assert disabled, f"numpy uses no kernel {level} on this CPU: nothing to compare"
    run = _run({"NPY_DISABLE_CPU_FEATURES": " ".join(disabled),
                "GLIBC_TUNABLES": f"glibc.cpu.hwcaps={glibc_caps}"}, _FOLLOWUP_CHILD)
    assert not set(disabled) & set(run["active"]), run["active"]
    different = sorted(k for k, v in run["files"].items()
                       if v != followup_everything_enabled["files"][k])
    assert not different, f"the follow-up pair's {different} differ {level}"
    assert len(followup_everything_enabled["files"]) == 8


@pytest.mark.parametrize("level", list(_LEVELS))
def test_phantom_bytes_do_not_depend_on_simd_level(level, everything_enabled):
    flag, numpy_targets, glibc_caps = _LEVELS[level]
    flags = _cpu_flags()
    if flag not in flags:
        have = " ".join(sorted(f for f in flags if f.startswith(("avx", "fma", "sse4")))) or "none"
        pytest.skip(
            f"this CPU has no {flag} (its SIMD flags: {have}), so the generator "
            f"could not be exercised {level}"
        )
    # Only the targets this CPU runs: switching off an absent one proves nothing.
    disabled = [t for t in numpy_targets(_numpy_dispatch()) if t in everything_enabled["active"]]
    assert disabled, f"numpy uses no kernel {level} on this CPU: nothing to compare"
    run = _run(
        {
            "NPY_DISABLE_CPU_FEATURES": " ".join(disabled),
            "GLIBC_TUNABLES": f"glibc.cpu.hwcaps={glibc_caps}",
        }
    )
    # The switch really took effect in the child: numpy no longer uses those kernels.
    assert not set(disabled) & set(run["active"]), run["active"]
    assert run["files"] == everything_enabled["files"], (
        f"the phantom generator writes other bytes {level}: an inside/outside decision, "
        "a label or an HU value depends on a SIMD kernel (use sparsect.data.fpmath)"
    )


def test_fpmath_matches_numpy_to_a_few_ulp():
    from sparsect.data import fpmath

    rng = np.random.default_rng(0)
    x = rng.uniform(-60.0, 60.0, 100_000)
    y = rng.uniform(-60.0, 60.0, 100_000)
    positive = rng.uniform(1e-9, 1e4, 100_000)
    np.testing.assert_allclose(fpmath.sin(x), np.sin(x), rtol=0, atol=4e-16)
    np.testing.assert_allclose(fpmath.cos(x), np.cos(x), rtol=0, atol=4e-16)
    np.testing.assert_allclose(fpmath.arctan2(y, x), np.arctan2(y, x), rtol=0, atol=2e-15)
    np.testing.assert_allclose(fpmath.exp(x / 10), np.exp(x / 10), rtol=1e-15)
    np.testing.assert_allclose(fpmath.log(positive), np.log(positive), rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(fpmath.pow_positive(positive, 2.37), positive**2.37, rtol=1e-14)
    np.testing.assert_allclose(fpmath.hypot(x, y), np.hypot(x, y), rtol=1e-15)
    # The quadrant and sign conventions of numpy.arctan2 on the axes.
    axes_y = np.array([0.0, 0.0, -0.0, 1.0, -1.0, 0.0])
    axes_x = np.array([1.0, -1.0, -1.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(fpmath.arctan2(axes_y, axes_x), np.arctan2(axes_y, axes_x))
    wrapped = fpmath.wrap_angle(x)
    assert wrapped.min() >= -np.pi and wrapped.max() < np.pi
    np.testing.assert_allclose(np.cos(wrapped), np.cos(x), atol=1e-13)
    assert fpmath.pow_positive(np.array([0.0]), 2.0)[0] == 0.0


def test_fpmath_normal_is_standard_gaussian_and_seeded():
    from sparsect.data import fpmath

    samples = fpmath.normal(np.random.default_rng(7), (400, 500))
    assert samples.shape == (400, 500)
    assert abs(samples.mean()) < 0.01 and abs(samples.std() - 1.0) < 0.01
    # Tail mass of a standard normal beyond 2 sigma is 4.55 %.
    assert abs(np.mean(np.abs(samples) > 2.0) - 0.0455) < 0.003
    again = fpmath.normal(np.random.default_rng(7), (400, 500))
    np.testing.assert_array_equal(samples, again)
    scalar = fpmath.normal(np.random.default_rng(7), None, loc=5.0, scale=2.0)
    one = fpmath.normal(np.random.default_rng(7), 1)
    assert isinstance(scalar, float) and scalar == 5.0 + 2.0 * one[0]


def test_digests_are_of_real_files(everything_enabled):
    names = sorted(everything_enabled["files"])
    assert names == ["subject_000.nii.gz", "subject_000_seg.nii.gz"]
    empty = hashlib.sha256(b"").hexdigest()
    assert empty not in everything_enabled["files"].values()


def test_fpmath_series_coefficients_are_exact_reciprocal_factorials():
    import math

    from sparsect.data import fpmath

    # Highest order first (Horner); 21! and above do not fit in an int64.
    assert fpmath._SIN_COEFFS == tuple((-1.0) ** k / math.factorial(2 * k + 1)
                                       for k in range(11, 0, -1))
    assert fpmath._COS_COEFFS == tuple((-1.0) ** k / math.factorial(2 * k)
                                       for k in range(11, 0, -1))
    assert all(0 < abs(c) < 1e-19 for c in fpmath._SIN_COEFFS[:2])
