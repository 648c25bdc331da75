"""User-facing errors.

Anything a user can cause (a bad file, a bad override, missing data) raises
:class:`InputError` with one sentence that names the input and the fix. The CLI
prints that sentence and exits non-zero; everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class InputError(Exception):
    """A problem with the user's input, reported as one actionable sentence."""
