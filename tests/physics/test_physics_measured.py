"""Raw counts with their flat (and dark) field become the line integrals they encode."""

from __future__ import annotations

import numpy as np
import pytest

from sparsect.errors import InputError
from sparsect.physics.measured import line_integrals_from_counts


def test_counts_give_back_the_line_integrals_per_bin_flat_and_dark_fields():
    rng = np.random.default_rng(0)
    line_integrals = rng.uniform(0.0, 4.0, size=(3, 8, 5))  # slices, views, detectors
    flat = rng.uniform(5e4, 2e5, size=5)  # a bowtie: I0 varies across bins
    dark = 12.0
    counts = flat * np.exp(-line_integrals) + dark
    out = line_integrals_from_counts(counts, flat + dark, "scan.npy", dark_field=dark)
    assert out.dtype == np.float32 and out.shape == counts.shape
    assert np.allclose(out, line_integrals, atol=1e-5)
    per_view = np.broadcast_to(flat, (8, 5)) * np.linspace(1.0, 1.1, 8)[:, None]  # tube drift
    drifting = per_view * np.exp(-line_integrals)
    assert np.allclose(line_integrals_from_counts(drifting, per_view, "scan.npy"), line_integrals,
                       atol=1e-5)


@pytest.mark.parametrize(("counts", "flat", "message"), [
    (np.array([[10.0, 0.0]]), 1e5, "has 1 zero or negative counts (first at index (0, 1))"),
    (np.array([[10.0, -3.0]]), 1e5, "replace photon-starved bins"),
    (np.array([[10.0, 20.0]]), 0.0, "flat field of sinogram 'scan.npy' is zero or negative"),
    (np.array([[10.0, 20.0]]), np.ones(3), "does not fit the counts (1, 2)"),
    (np.array([[10.0, np.nan]]), 1e5, "NaN or infinite"),
])
def test_counts_that_have_no_logarithm_are_refused_in_one_sentence(counts, flat, message):
    with pytest.raises(InputError, match=None) as error:
        line_integrals_from_counts(counts, flat, "scan.npy")
    assert message in str(error.value) and str(error.value).count(". ") == 0
