"""User-facing errors.

Anything a user can cause (a bad file, a bad override, missing data) raises
:class:`InputError` with one sentence that names the input and the fix. The CLI
prints that sentence and exits non-zero; everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class InputError(Exception):
    """A problem with the user's input, reported as one actionable sentence."""


@contextmanager
def reading(what: str, fix: str) -> Iterator[None]:
    """Turns any failure of a third-party reader inside the block into one sentence:
    ``Cannot read <what> (<error type>): <fix>.``; an :class:`InputError` passes as is.

    >>> with reading("scan 'x.nii'", "check the file"):
    ...     raise OSError("truncated")
    Traceback (most recent call last):
    sparsect.errors.InputError: Cannot read scan 'x.nii' (OSError): check the file.
    """
    try:
        yield
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - any reader failure is the file's fault
        raise InputError(f"Cannot read {what} ({type(error).__name__}): {fix}.") from None
