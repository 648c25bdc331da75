"""Loading trained models safely.

Checkpoints are read with ``torch.load(weights_only=True)``, which refuses to
unpickle arbitrary objects: a crafted checkpoint cannot execute code. The
module is rebuilt from the plain hyper-parameters stored beside the weights.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from sparsect.errors import InputError
from sparsect.models.module import ReconModule


def save_portable(source: Path, target: Path) -> Path:
    """Writes the checkpoint ``source`` to ``target`` without its callback state.

    Lightning's ModelCheckpoint state holds absolute paths of the work folder, so
    the same weights trained in two checkouts made two files: two DVC hashes and two
    registry versions of one model. Nothing downstream reads that state (resuming
    uses ``last.ckpt`` in the work folder), and ``torch.save`` of equal content
    writes equal bytes.
    """
    from sparsect.data.store import atomic_write_bytes

    payload = torch.load(source, map_location="cpu", weights_only=True)
    payload.pop("callbacks", None)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(Path(target), buffer.getvalue())
    return Path(target)


def load_module(path: Path, map_location: str | torch.device = "cpu") -> ReconModule:
    """Rebuilds a :class:`ReconModule` from a checkpoint, in eval mode.

    Raises:
        InputError: if the file is missing, unreadable or not a sparsect checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Checkpoint '{path}' does not exist: train a model or fix the path.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling errors have many types
        raise InputError(
            f"Checkpoint '{path}' cannot be loaded safely ({type(error).__name__}): "
            "use a checkpoint written by `sparsect train`."
        ) from None
    if not isinstance(payload, dict) or "state_dict" not in payload \
            or "hyper_parameters" not in payload:
        raise InputError(
            f"Checkpoint '{path}' is not a sparsect checkpoint: "
            "use one written by `sparsect train`."
        )
    try:
        module = ReconModule(**dict(payload["hyper_parameters"]))
        module.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, RuntimeError) as error:
        raise InputError(
            f"Checkpoint '{path}' does not match this version's models "
            f"({str(error).splitlines()[0]}): retrain it with this version."
        ) from None
    return module.eval()
