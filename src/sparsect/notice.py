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
