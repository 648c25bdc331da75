"""The task cohort: lesion-free subjects of their own seed and the lesions put into them."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import ROOT
from sparsect.config import load_params
from sparsect.data.cohort import HOSTS, CohortSpec, build_cohort, sphere_coverage
from sparsect.data.phantom import PhantomConfig
from sparsect.errors import InputError
from sparsect.stages.cohort import cohort as cohort_stage
from sparsect.stages.study import load_cohort

SMALL = PhantomConfig(shape=(128, 128, 4), spacing_mm=(3.0, 3.0, 5.0), supersample=1,
                      slab_samples=1)
SPEC = CohortSpec(subjects=2, slices=6, lesions_per_subject=4, min_lesions=2, roi_px=9,
                  diameter_mm=(8.0, 14.0))


@pytest.fixture(scope="module")
def small_cohort():
    return build_cohort(SPEC, SMALL, 64, 6.0, (-1024.0, 3071.0))


@pytest.mark.parametrize("radius", [6.0, 12.0])
def test_sphere_coverage_sums_to_the_sphere_volume(radius):
    coverage = sphere_coverage((9, 32, 32), (4.0, 15.3, 16.6), radius, 3.0, 5.0)
    volume = coverage.sum() * 3.0 * 3.0 * 5.0
    assert volume == pytest.approx(4 / 3 * np.pi * radius**3, rel=0.03)
    assert coverage.max() == 1.0 and coverage.min() == 0.0


def test_lesions_lie_in_their_host_with_their_drawn_size_and_contrast(small_cohort):
    c = small_cohort
    assert len(c.lesions) >= SPEC.min_lesions
    assert c.hu.shape == c.labels.shape == c.lesion_hu.shape == (2, 6, 64, 64)
    # lesion-present = lesion-absent + lesion map, and the map is zero outside the hosts
    hosts = np.isin(c.labels, sum(HOSTS.values(), ()))
    assert np.all(c.lesion_hu[~hosts] == 0)
    for lesion in c.lesions:
        s, z, r, col = (lesion[k] for k in ("subject", "slice", "row", "col"))
        assert 1 <= z <= 4
        assert lesion["host"] in SPEC.hosts
        assert np.isin(c.labels[s, z, r, col], HOSTS[lesion["host"]])
        assert 8.0 <= lesion["diameter_mm"] <= 14.0
        assert 10.0 <= abs(lesion["contrast_hu"]) <= 100.0
        assert c.lesion_hu[s, z, r, col] == pytest.approx(lesion["contrast_hu"], rel=0.05)
        if lesion["host"] == "lung":
            assert lesion["contrast_hu"] > 0
    # regions of interest of one subject's nearby lesions do not overlap
    for a in c.lesions:
        for b in c.lesions:
            if a is not b and a["subject"] == b["subject"] and abs(a["slice"] - b["slice"]) <= 2:
                assert max(abs(a["row"] - b["row"]), abs(a["col"] - b["col"])) >= SPEC.roi_px


def test_the_cohort_is_deterministic_and_not_the_data_sets_subjects(small_cohort):
    again = build_cohort(SPEC, SMALL, 64, 6.0, (-1024.0, 3071.0), workers=2)
    np.testing.assert_array_equal(again.hu, small_cohort.hu)
    np.testing.assert_array_equal(again.lesion_hu, small_cohort.lesion_hu)
    assert again.lesions == small_cohort.lesions
    other = build_cohort(CohortSpec(**{**SPEC.__dict__, "seed": 1}), SMALL, 64, 6.0,
                         (-1024.0, 3071.0))
    assert not np.array_equal(other.hu, small_cohort.hu)


@pytest.mark.parametrize("bad", [{"subjects": 0}, {"diameter_mm": (10.0, 5.0)},
                                 {"contrast_hu": (0.0, 10.0)}, {"hosts": ("kidney",)},
                                 {"roi_px": 8}])
def test_bad_specs_are_refused(bad):
    with pytest.raises(ValueError):
        CohortSpec(**bad)


def test_too_many_lesions_asked_is_one_sentence():
    with pytest.raises(ValueError, match="min_lesions=500"):
        build_cohort(CohortSpec(subjects=1, slices=4, min_lesions=500, roi_px=9), SMALL, 64,
                     6.0, (-1024.0, 3071.0))


def test_stage_writes_the_cohort_and_refuses_bad_settings(tmp_path):
    cfg = load_params(ROOT / "params.yaml", [
        "data.image_size=64", "data.pixel_size_mm=6.0", "data.phantom.shape=[128,128,4]",
        "data.phantom.spacing_mm=[3.0,3.0,5.0]", "study.cohort.subjects=1",
        "study.cohort.slices=5", "study.cohort.min_lesions=1", "study.cohort.roi_px=9"])
    out = cohort_stage(cfg, tmp_path / "cohort", workers=1)
    loaded = load_cohort(out)
    assert loaded.hu.shape[:2] == (1, 5) and len(loaded.lesions) >= 1
    assert loaded.pixel_size_mm == 6.0 and loaded.slice_mm == 5.0
    bad = load_params(ROOT / "params.yaml", ["study.cohort.subjects=0"])
    with pytest.raises(InputError, match="study.cohort"):
        cohort_stage(bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(InputError, match="sparsect cohort"):
        load_cohort(tmp_path / "missing")
