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
