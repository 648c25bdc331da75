"""Hydra multirun over the training chain: ``sparsect train -m geometry.views=30,60,120``.

Each Hydra job composes ``conf/`` with its overrides, simulates the view count
into the job's output folder, trains the models there and evaluates them on
the test split. The prepared slices and masks of the main pipeline are shared
(they do not depend on the swept keys; run ``dvc repro prepare masks`` first).

Any Hydra launcher works. The pinned environment has Hydra's submitit launcher:
``hydra/launcher=submitit_local`` runs the jobs as processes on this machine (several at
once), ``hydra/launcher=submitit_slurm`` submits them to SLURM as one job array. A job
finds the prepared slices and masks through its environment (``hydra.job.env_set``),
which every launcher sets in the job's own process.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# the job's environment variables naming the shared inputs
_INPUTS = {"prepared": "SPARSECT_SWEEP_PREPARED", "masks": "SPARSECT_SWEEP_MASKS"}


def _job(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from sparsect.stages.evaluate import evaluate
    from sparsect.stages.simulate import simulate
    from sparsect.stages.train import launched_as_rank_zero, train

    out = Path(HydraConfig.get().runtime.output_dir)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    views = int(cfg.geometry.views)
    prepared, masks = (Path(os.environ[_INPUTS[key]]) for key in ("prepared", "masks"))
    # A job of several tasks (SLURM: trainer.num_nodes x trainer.devices) runs this in
    # every task: rank 0 simulates and evaluates, all of them train (DDP).
    zero = launched_as_rank_zero()
    if zero:
        simulate(cfg, prepared, out / "sim", views)
    else:
        _wait_for(out / "sim" / "geometry.json", float(cfg.trainer.get("timeout_s") or 600))
    train(cfg, prepared, out / "sim", masks, out / "models", views)
    if not zero:
        return float("nan")
    evaluate(cfg, prepared, out / "sim", masks, out / "models", out / "evaluation", views)
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    print(f"[sweep] {views} views: " + ", ".join(
        f"{method} {values['psnr']:.2f} dB" for method, values in metrics.items()
        if not method.startswith("_")))
    learned = [values["psnr"] for method, values in metrics.items()
               if "upper_bound" in values and not values["upper_bound"]]
    return float(max(learned)) if learned else float("nan")


def _wait_for(path: Path, timeout_s: float) -> None:
    """Waits for rank 0 to write ``path`` (a stage's output is complete once it exists)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank 0 did not write '{path}' within {timeout_s:.0f} s")
        time.sleep(1.0)


def _quoted(path: Path) -> str:
    """``path`` as a Hydra override value (quoted: a path may hold ``,`` or ``=``)."""
    text = str(path).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def multirun(overrides: list[str], prepared: Path, masks: Path, conf_dir: Path = Path("conf"),
             sweep_dir: Path = Path("multirun")) -> None:
    """Runs Hydra's multirun with ``overrides`` (Hydra sweep syntax, e.g. ``a=1,2``)."""
    import hydra

    from sparsect.errors import InputError

    for path in (prepared, masks, conf_dir):
        if not Path(path).exists():
            raise InputError(f"'{path}' does not exist: run `dvc repro prepare masks` from the "
                             "project root first.")
    inputs = {"prepared": Path(prepared).resolve(), "masks": Path(masks).resolve()}
    app = hydra.main(config_path=None, config_name="config", version_base="1.3")(_job)
    argv = sys.argv
    sys.argv = [argv[0], "--multirun", "--config-dir", str(Path(conf_dir).resolve()),
                f"hydra.sweep.dir={Path(sweep_dir).resolve()}",
                "hydra.sweep.subdir=${hydra.job.override_dirname}",
                *(f"+hydra.job.env_set.{_INPUTS[key]}={_quoted(path)}"
                  for key, path in inputs.items()),
                *overrides]
    try:
        app()
    finally:
        sys.argv = argv
