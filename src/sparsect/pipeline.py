"""Where the pipeline's stages write, as ``dvc.yaml`` declares it.

``dvc.yaml`` is the one place that names a stage's outputs. Commands run outside
``dvc repro`` (the Makefile's experiments: the ablation, the follow-up runs, the fan
beam, Learned Primal-Dual) ask for a stage's output instead of spelling its path, so
moving an output is an edit of ``dvc.yaml`` alone: ``sparsect stage-out simulate@30``
prints ``artifacts/sim/30``. Stages are addressed as DVC addresses them
(``prepare``, ``train@60``: a ``foreach`` stage with its item).

It also repairs what a hard kill of a DVC command can leave in DVC's own state
(:func:`recover`, ``sparsect recover``), so that a killed ``dvc repro`` is rerun, not
debugged.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from sparsect.data.store import atomic_write_bytes
from sparsect.errors import InputError


def stage_outputs(root: Path | str = ".") -> dict[str, list[str]]:
    """Every stage of the DVC project at or above ``root``, by address, with the paths
    of its outputs (outs, metrics and plots) relative to the project root."""
    with _repo(root) as repo:
        return {stage.addressing: [out.def_path for out in stage.outs]
                for stage in repo.index.stages if stage.addressing != "data.dvc"}


def _repo(root: Path | str):
    """The DVC project at or above ``root``, or one sentence saying there is none."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        return Repo(str(root))
    except DvcException as error:
        raise InputError(f"No DVC pipeline found from '{root}' ({error}): run from the "
                         "sparsect project root, where dvc.yaml is.") from None


def stage_output(stage: str, outputs: dict[str, list[str]]) -> list[str]:
    """The outputs of ``stage``; an unknown stage is refused with the stages there are.

    >>> stage_output("prepare", {"prepare": ["artifacts/prepared"]})
    ['artifacts/prepared']
    >>> stage_output("train@15", {"train@30": ["artifacts/models/30"]})
    Traceback (most recent call last):
    sparsect.errors.InputError: dvc.yaml has no stage 'train@15' (its stages: train@30): \
give one of them, or add the stage (or its view count to sweep.views) first.
    """
    if stage not in outputs:
        raise InputError(f"dvc.yaml has no stage '{stage}' (its stages: "
                         f"{', '.join(outputs)}): give one of them, or add the stage (or its "
                         "view count to sweep.views) first.")
    return outputs[stage]


def recover(root: Path | str = ".") -> list[str]:
    """Repair the DVC state a hard kill of a DVC command can leave; return what was done.

    DVC records the paths its running commands read and write in ``.dvc/tmp/rwlock``
    and rewrites that JSON file in place (truncate, then write). A ``SIGKILL``, an
    out-of-memory kill or a lost node between the two leaves it empty, and from then on
    every ``dvc repro`` and ``dvc status`` stops with "Unable to read RWLock-file ...
    JSON structure is corrupted" (DVC issue 7615) until the file is removed by hand.
    A cut write is never valid JSON (the closing brace comes last); a readable file,
    stale entries included, is DVC's own to clear (it drops those of dead processes).

    The unreadable file is removed only while holding DVC's repository lock, which
    every ``dvc repro``/``dvc status`` in this workspace holds while it runs, and the
    lock DVC takes to edit the file, so no running command's entries are lost and
    no write is cut (a ``dvc exp run``, which releases the repository lock while its
    stages run, would stop at its next edit of the unreadable table anyway). A
    ``dvc.lock`` cut the same way is put back from git when DVC cannot read it.
    ``make run`` calls it before ``dvc repro``; it is a no-op on an intact project.
    """
    from dvc.lock import LockError, make_lock
    from dvc.rwlock import RWLOCK_LOCK

    with _repo(root) as repo:
        tmp = Path(repo.tmp_dir)
        guard = make_lock(str(tmp / RWLOCK_LOCK), tmp_dir=str(tmp),
                          hardlink_lock=repo.config["core"].get("hardlink_lock", False))
        try:
            with repo.lock, guard:
                return _remove_cut_rwlock(repo) + _restore_cut_lockfile(repo)
        except LockError:
            raise InputError(f"Another DVC command is running in {repo.root_dir} (it holds "
                             f"{tmp / 'lock'}): let it end or stop it, then rerun "
                             "sparsect recover.") from None


def _remove_cut_rwlock(repo) -> list[str]:  # noqa: ANN001 - dvc.repo.Repo, imported lazily
    from dvc.rwlock import RWLOCK_FILE

    table = Path(repo.tmp_dir) / RWLOCK_FILE
    try:
        json.loads(table.read_text(encoding="utf-8"))
        return []
    except FileNotFoundError:
        return []
    except (UnicodeDecodeError, json.JSONDecodeError):
        size = table.stat().st_size
        table.unlink()
    return [f"removed {table.relative_to(repo.root_dir)}, DVC's table of running commands, "
            f"which a killed DVC command left unreadable ({size} bytes)"]


def _restore_cut_lockfile(repo) -> list[str]:  # noqa: ANN001 - dvc.repo.Repo, imported lazily
    """``dvc.lock`` is rewritten in place too, once per finished stage. Most cuts leave
    a readable prefix (the stages after the cut only rerun); one DVC refuses is put back
    from git's last commit, so the stages recorded since then rerun."""
    from dvc.dvcfile import LOCK_FILE, Lockfile
    from dvc.exceptions import DvcException

    path = Path(repo.root_dir) / LOCK_FILE
    try:
        Lockfile(repo, str(path)).load()
        return []
    except DvcException as error:
        reason = str(error).splitlines()[0]
    try:
        committed = subprocess.run(["git", "show", f"HEAD:./{LOCK_FILE}"], cwd=repo.root_dir,
                                   capture_output=True, check=False)
    except OSError:  # no git on this machine
        committed = None
    if committed is None or committed.returncode != 0:
        raise InputError(f"{path} is unreadable (DVC: {reason}) and git has no committed "
                         "copy to put back: remove it, and dvc repro reruns every stage.")
    atomic_write_bytes(path, committed.stdout)
    return [f"restored {LOCK_FILE} from git's last commit: a killed DVC command left it "
            f"unreadable (DVC: {reason}); the stages recorded since that commit rerun"]
