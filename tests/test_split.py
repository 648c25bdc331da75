import pytest

from sparsect.data.split import SPLITS, split_subjects
from sparsect.errors import InputError

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def test_every_subject_in_exactly_one_split():
    subjects = [f"subject_{i:03d}" for i in range(17)]
    splits = split_subjects(subjects, FRACTIONS, seed=3)
    assigned = [s for split in SPLITS for s in splits[split]]
    assert sorted(assigned) == sorted(subjects)
    for a in SPLITS:
        for b in SPLITS:
            if a != b:
                assert not set(splits[a]) & set(splits[b])
    assert len(splits["val"]) == len(splits["test"]) == 3


def test_split_is_reproducible_and_order_free():
    subjects = [f"s{i}" for i in range(10)]
    first = split_subjects(subjects, FRACTIONS, seed=1)
    assert first == split_subjects(list(reversed(subjects)), FRACTIONS, seed=1)
    assert first != split_subjects(subjects, FRACTIONS, seed=2)


@pytest.mark.parametrize(
    ("subjects", "fractions", "message"),
    [
        (["a", "b"], FRACTIONS, "at least 3"),
        (["a", "a", "b", "c"], FRACTIONS, "share a subject name"),
        (["a", "b", "c"], {"train": 0.5, "val": 0.5, "test": 0.5}, "sum to 1"),
    ],
)
def test_bad_split_input_is_explained(subjects, fractions, message):
    with pytest.raises(InputError, match=message):
        split_subjects(subjects, fractions, seed=0)


def test_scans_of_one_patient_stay_in_one_split():
    subjects = [f"s{i}" for i in range(10)] + ["p_full", "p_quarter", "p_phase"]
    groups = {"p_full": "P", "p_quarter": "P", "p_phase": "P"}
    for seed in range(20):
        splits = split_subjects(subjects, FRACTIONS, seed=seed, groups=groups)
        holding = [split for split in SPLITS if "p_full" in splits[split]]
        assert splits[holding[0]].count("p_quarter") == splits[holding[0]].count("p_phase") == 1
    # without groups the three scans scatter for some seed: the grouping does the work
    assert any(len({split for split in SPLITS for name in ("p_full", "p_quarter", "p_phase")
                    if name in split_subjects(subjects, FRACTIONS, seed=seed)[split]}) > 1
               for seed in range(20))
    with pytest.raises(InputError, match="Only 2 patient"):
        split_subjects(["a", "b", "c"], FRACTIONS, seed=0, groups={"a": "P", "b": "P"})


def test_dicom_series_of_one_patient_are_grouped_by_patient_id(tmp_path):
    import numpy as np

    from helpers import write_dicom_series
    from sparsect.data.io import find_scans

    volume = np.full((8, 8, 3), 40.0)
    for number in (2, 3):  # two series of one patient in one study folder
        write_dicom_series(tmp_path / "data" / "patient_a", volume, series_number=number,
                           prefix=f"s{number}_", patient_id="A")
    write_dicom_series(tmp_path / "data" / "patient_b", volume, patient_id="B")
    scans = {s.subject: s for s in find_scans(tmp_path / "data")}
    assert set(scans) == {"patient_a_2", "patient_a_3", "patient_b"}
    assert scans["patient_a_2"].patient == scans["patient_a_3"].patient != scans[
        "patient_b"].patient
