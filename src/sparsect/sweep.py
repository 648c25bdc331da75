"""Hydra multirun over the training chain: ``sparsect train -m geometry.views=30,60,120``.

Each Hydra job composes ``conf/`` with its overrides, simulates the view count
into the job's output folder, trains the models there and evaluates them on
the test split. The prepared slices and masks of the main pipeline are shared
(they do not depend on the swept keys; run ``dvc repro prepare masks`` first).

Any Hydra launcher works; for SLURM install the extra ``sparsect[slurm]``
(``hydra-submitit-launcher``) and add ``hydra/launcher=submitit_slurm``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

_INPUTS: dict[str, Path] = {}


def _job(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from sparsect.stages.evaluate import evaluate
    from sparsect.stages.simulate import simulate
    from sparsect.stages.train import train

    out = Path(HydraConfig.get().runtime.output_dir)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    views = int(cfg.geometry.views)
    prepared, masks = _INPUTS["prepared"], _INPUTS["masks"]
    simulate(cfg, prepared, out / "sim", views)
    train(cfg, prepared, out / "sim", masks, out / "models", views)
    evaluate(cfg, prepared, out / "sim", masks, out / "models", out / "evaluation", views)
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    print(f"[sweep] {views} views: " + ", ".join(
        f"{method} {values['psnr']:.2f} dB" for method, values in metrics.items()
        if not method.startswith("_")))
    learned = [values["psnr"] for method, values in metrics.items()
               if "upper_bound" in values and not values["upper_bound"]]
    return float(max(learned)) if learned else float("nan")


def multirun(overrides: list[str], prepared: Path, masks: Path, conf_dir: Path = Path("conf"),
             sweep_dir: Path = Path("multirun")) -> None:
    """Runs Hydra's multirun with ``overrides`` (Hydra sweep syntax, e.g. ``a=1,2``)."""
    import hydra

    from sparsect.errors import InputError

    for path in (prepared, masks, conf_dir):
        if not Path(path).exists():
            raise InputError(f"'{path}' does not exist: run `dvc repro prepare masks` from the "
                             "project root first.")
    _INPUTS.update(prepared=Path(prepared).resolve(), masks=Path(masks).resolve())
    app = hydra.main(config_path=None, config_name="config", version_base="1.3")(_job)
    argv = sys.argv
    sys.argv = [argv[0], "--multirun", "--config-dir", str(Path(conf_dir).resolve()),
                f"hydra.sweep.dir={Path(sweep_dir).resolve()}",
                "hydra.sweep.subdir=${hydra.job.override_dirname}", *overrides]
    try:
        app()
    finally:
        sys.argv = argv
