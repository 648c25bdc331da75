"""Subject-level train/val/test split, keeping each patient's scans together.

Slices of one subject are strongly correlated, so splitting by slice leaks
anatomy from training into testing; so do two scans of one patient (a full- and
a quarter-dose series, two contrast phases) in two splits. Splits are made by
patient group (each subject its own group unless told otherwise), from a seeded
permutation of the sorted group names, so they are reproducible and do not
depend on file-system order.
"""

from __future__ import annotations

import numpy as np

from sparsect.errors import InputError

SPLITS = ("train", "val", "test")


def split_subjects(subjects: list[str], fractions: dict[str, float], seed: int,
                   groups: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Assigns each subject to exactly one split, and all subjects of a group to the same.

    Args:
        subjects: unique subject names.
        fractions: ``{"train": f, "val": f, "test": f}``, summing to 1, of the groups.
        seed: permutation seed.
        groups: subject -> patient group (a subject not in it is a group of its own).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` with at least one subject each.

    >>> fractions = {"train": .6, "val": .2, "test": .2}
    >>> split = split_subjects(["a", "b", "c", "d", "e"], fractions, seed=0)
    >>> {name: len(part) for name, part in split.items()}
    {'train': 3, 'val': 1, 'test': 1}
    >>> sorted(sum(split.values(), []))
    ['a', 'b', 'c', 'd', 'e']
    >>> together = split_subjects(["a", "b", "c", "d", "e"], fractions, seed=0,
    ...                           groups={"a": "p1", "b": "p1"})
    >>> [part for part in together.values() if "a" in part][0].count("b")
    1
    """
    if len(set(subjects)) != len(subjects):
        raise InputError("Two scans share a subject name: rename one so every scan is unique.")
    group_of = {subject: (groups or {}).get(subject, subject) for subject in subjects}
    names = sorted(set(group_of.values()))
    if len(names) < 3:
        what = "scan(s)" if len(names) == len(subjects) else "patient(s)"
        raise InputError(
            f"Only {len(names)} {what} found but a train/val/test split by "
            f"{'subject' if what == 'scan(s)' else 'patient'} needs at least 3: add scans "
            "to the data folder."
        )
    total = sum(fractions[s] for s in SPLITS)
    if any(fractions[s] <= 0 for s in SPLITS) or abs(total - 1.0) > 1e-6:
        raise InputError(
            f"Split fractions {dict(fractions)} must be positive and sum to 1: "
            "fix data.split in the config."
        )
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    n_val = max(1, round(fractions["val"] * len(names)))
    n_test = max(1, round(fractions["test"] * len(names)))
    n_train = len(names) - n_val - n_test
    if n_train < 1:
        raise InputError(f"No subject is left for training among {len(names)}: add scans.")
    parts = {"train": order[:n_train], "val": order[n_train : n_train + n_val],
             "test": order[n_train + n_val :]}
    return {split: sorted(subject for subject in subjects if group_of[subject] in set(part))
            for split, part in parts.items()}
