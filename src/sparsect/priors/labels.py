"""Label tables: the tissue class each value of a label map stands for.

A table is given by name (:data:`TABLE_NAMES`) or as a mapping from label value to a
tissue class name of :data:`~sparsect.priors.classes.TISSUE_CLASSES`, or ``"hu"`` for
voxels whose class comes from the HU of the same slice; :func:`label_table` resolves
either to label value -> tissue class index (or
:data:`~sparsect.priors.masks.FROM_HU`). The ``masks`` and ``external`` stages read
their ``label_table`` settings through it, and ``sparsect reconstruct --prior-table``
names one of :data:`TABLE_NAMES`.

>>> from sparsect.priors.classes import BONE
>>> from sparsect.priors.masks import FROM_HU
>>> label_table({0: "hu", "5": "bone"}) == {0: FROM_HU, 5: BONE}
True

:data:`TABLE_NAMES` is written out rather than read from the tables, and the tables
are imported when first resolved: the CLI builds its parser from the names on every
command, and the tables' modules import NumPy and SciPy (about 0.5 s). The names stay
those of the tables:

>>> from sparsect.priors.totalsegmentator import TISSUE_TABLES
>>> TABLE_NAMES == ("phantom", *TISSUE_TABLES)
True
"""

from __future__ import annotations

from collections.abc import Mapping

from sparsect.errors import InputError
from sparsect.priors.classes import TISSUE_CLASSES

__all__ = ["CLASS_NAMES", "TABLE_NAMES", "label_table"]

TABLE_NAMES: tuple[str, ...] = ("phantom", "totalsegmentator", "totalsegmentator_v1")
"""Table names :func:`label_table` knows: the built-in phantoms' organ table and
TotalSegmentator's (:data:`~sparsect.priors.totalsegmentator.TISSUE_TABLES`)."""

CLASS_NAMES: tuple[str, ...] = (*TISSUE_CLASSES, "hu")
"""What a label value may map to in a table given as a mapping."""


def label_table(spec: str | Mapping, setting: str = "Label table") -> dict[int, int]:
    """A label table as label value -> tissue class index (or ``FROM_HU``).

    ``spec`` is one of:

    - ``"phantom"``: the built-in organ table of the phantoms' label maps;
    - ``"totalsegmentator"``: TotalSegmentator v2 "total" maps (117 structures);
    - ``"totalsegmentator_v1"``: TotalSegmentator v1 "total" maps (104 structures);
    - a mapping label value -> tissue class name, or ``"hu"`` for voxels whose class
      comes from the HU thresholds of the same slice.

    In the TotalSegmentator tables label 0 ("none of the structures": fat,
    unsegmented muscle, air), the digestive tract (its lumen holds gas or fat-dense
    contents) and v1's mixed "face" region take their classes from HU; see
    :mod:`sparsect.priors.totalsegmentator`.

    Args:
        spec: a name of :data:`TABLE_NAMES` or a mapping as above.
        setting: what ``spec`` is called in messages (e.g. ``"masks.label_table"``).

    Returns:
        A new dict, which the caller may change.

    Raises:
        InputError: if ``spec`` is an unknown name or maps a value to an unknown class;
            use a listed name or a tissue class name.
    """
    from sparsect.priors.masks import FROM_HU
    from sparsect.priors.organs import ORGAN_TO_TISSUE
    from sparsect.priors.totalsegmentator import TISSUE_TABLES

    if isinstance(spec, str):
        if spec == "phantom":
            return dict(ORGAN_TO_TISSUE)
        if spec in TISSUE_TABLES:
            return dict(TISSUE_TABLES[spec])
        raise InputError(
            f"{setting} '{spec}' is unknown: use "
            + ", ".join(f"'{name}'" for name in TABLE_NAMES)
            + " or a mapping from label value to one of "
            + ", ".join(CLASS_NAMES)
            + "."
        )
    table = {}
    for label, name in spec.items():
        if name not in CLASS_NAMES:
            raise InputError(
                f"{setting} maps {label} to '{name}', which is not a tissue class: "
                "use one of " + ", ".join(CLASS_NAMES) + "."
            )
        table[int(label)] = FROM_HU if name == "hu" else TISSUE_CLASSES.index(name)
    return table
