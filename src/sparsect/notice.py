"""The research-use notice, in one place for every output that carries it.

sparsect's models are trained on simulated phantoms and judged on a handful of
real scans; nothing here has been validated for clinical use.
"""

RESEARCH_NOTICE = (
    "sparsect is a research prototype, not validated for clinical diagnosis: "
    "do not use its reconstructions to diagnose or treat patients."
)
"""The full notice: README, ``--help`` texts and ``report.md``."""

RESEARCH_NOTICE_SHORT = "research prototype, not for clinical diagnosis"
"""The short form for fields with little room (the 80-byte NIfTI ``descrip``)."""

DESCRIP_BYTES = 79
"""Room in the NIfTI ``descrip`` field: 80 bytes, one of them the terminating NUL."""


def nifti_description(what: str) -> str:
    """``what`` and the short notice for a NIfTI ``descrip``; the notice alone if both
    do not fit, so every NIfTI sparsect writes carries it."""
    text = f"{what}; {RESEARCH_NOTICE_SHORT}"
    return text if len(text.encode()) <= DESCRIP_BYTES else RESEARCH_NOTICE_SHORT
