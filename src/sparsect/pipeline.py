"""Where the pipeline's stages write, as ``dvc.yaml`` declares it.

``dvc.yaml`` is the one place that names a stage's outputs. Commands run outside
``dvc repro`` (the Makefile's experiments: the ablation, the follow-up runs, the fan
beam, Learned Primal-Dual) ask for a stage's output instead of spelling its path, so
moving an output is an edit of ``dvc.yaml`` alone: ``sparsect stage-out simulate@30``
prints ``artifacts/sim/30``. Stages are addressed as DVC addresses them
(``prepare``, ``train@60``: a ``foreach`` stage with its item).
"""

from __future__ import annotations

from pathlib import Path

from sparsect.errors import InputError


def stage_outputs(root: Path | str = ".") -> dict[str, list[str]]:
    """Every stage of the DVC project at or above ``root``, by address, with the paths
    of its outputs (outs, metrics and plots) relative to the project root."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            return {stage.addressing: [out.def_path for out in stage.outs]
                    for stage in repo.index.stages if stage.addressing != "data.dvc"}
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
