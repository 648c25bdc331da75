"""Subject-level train/val/test split.

Slices of one subject are strongly correlated, so splitting by slice leaks
anatomy from training into testing. Splits are made by subject, from a
seeded permutation of the sorted subject names, so they are reproducible and
do not depend on file-system order.
"""

from __future__ import annotations

import numpy as np

from sparsect.errors import InputError

SPLITS = ("train", "val", "test")


def split_subjects(subjects: list[str], fractions: dict[str, float],
                   seed: int) -> dict[str, list[str]]:
    """Assigns each subject to exactly one split.

    Args:
        subjects: unique subject names.
        fractions: ``{"train": f, "val": f, "test": f}``, summing to 1.
        seed: permutation seed.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` with at least one subject each.

    >>> fractions = {"train": .6, "val": .2, "test": .2}
    >>> split = split_subjects(["a", "b", "c", "d", "e"], fractions, seed=0)
    >>> {name: len(part) for name, part in split.items()}
    {'train': 3, 'val': 1, 'test': 1}
    >>> sorted(sum(split.values(), []))
    ['a', 'b', 'c', 'd', 'e']
    """
    names = sorted(set(subjects))
    if len(names) != len(subjects):
        raise InputError("Two scans share a subject name: rename one so every scan is unique.")
    if len(names) < 3:
        raise InputError(
            f"Only {len(names)} scan(s) found but a train/val/test split by subject needs at "
            "least 3: add scans to the data folder."
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
    return {
        "train": sorted(order[:n_train]),
        "val": sorted(order[n_train : n_train + n_val]),
        "test": sorted(order[n_train + n_val :]),
    }
