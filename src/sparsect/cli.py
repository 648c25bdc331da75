"""Command line: ``sparsect <command> [options] [key=value overrides]``.

Every stage command reads ``params.yaml`` (``--params``) and takes its input
and output paths as options, so ``dvc.yaml`` is the one place that names
them. A mistake the user can fix ends in one sentence and exit code 2; pass
``--debug`` (or set ``HYDRA_FULL_ERROR=1``) for the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sparsect.errors import InputError
from sparsect.notice import RESEARCH_NOTICE


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="parameter file (default: params.yaml)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _add_paths(parser: argparse.ArgumentParser, *names: str, required: bool = True) -> None:
    """Stage input/output folders, named as in dvc.yaml."""
    for name in names:
        parser.add_argument(f"--{name}", type=Path, required=required)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsect",
        description=f"sparse-view CT: simulate, train, evaluate, register. {RESEARCH_NOTICE}",
        epilog="Config overrides are given as key=value after the command.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("params", help="compose conf/ into params.yaml")
    p.add_argument("--conf", type=Path, default=Path("conf"))
    p.add_argument("--out", type=Path, default=Path("params.yaml"))
    _add_common(p)

    p = commands.add_parser("make-data", help="write the built-in phantom scans")
    p.add_argument("--out", type=Path, default=Path("data"))
    p.add_argument("--if-empty", action="store_true",
                   help="do nothing if the folder already holds files")
    _add_common(p)

    p = commands.add_parser("prepare", help="scans -> standardised slices, split by subject")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--out", type=Path, required=True)
    _add_common(p)

    p = commands.add_parser("simulate", help="sparse-view sinograms and FBP")
    _add_paths(p, "prepared", "out")
    p.add_argument("--views", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="simulate only the subjects of shard K of N (cluster array jobs)")
    _add_common(p)

    p = commands.add_parser("merge-shards", help="assemble `simulate --shard` outputs")
    p.add_argument("shards", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    _add_common(p)

    p = commands.add_parser("baselines", help="SIRT and TV reconstructions of the test split")
    _add_paths(p, "sim", "out")
    p.add_argument("--workers", type=int, default=None)
    _add_common(p)

    p = commands.add_parser("masks", help="tissue-class masks of the full-dose slices")
    _add_paths(p, "prepared", "out")
    _add_common(p)

    p = commands.add_parser(
        "train", help="train unet and sg_unet at one view count (-m: Hydra multirun sweep)")
    p.add_argument("-m", "--multirun", action="store_true",
                   help="Hydra multirun over conf/ with sweep overrides, e.g. "
                        "geometry.views=30,60,120 (simulate, train, evaluate per job)")
    p.add_argument("--prepared", type=Path, default=Path("artifacts/prepared"))
    p.add_argument("--sim", type=Path, default=None)
    p.add_argument("--masks", type=Path, default=Path("artifacts/masks"))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--sweep-dir", type=Path, default=Path("multirun"))
    p.add_argument("--views", type=int, default=None)
    p.add_argument("--models", default=None,
                   help="comma-separated: unet, sg_unet, sg_threshold, sg_oracle "
                        "(default: unet and the model of prior.variant)")
    _add_common(p)

    p = commands.add_parser("evaluate", help="test-split metrics and panels at one view count")
    _add_paths(p, "prepared", "sim", "masks", "models")
    p.add_argument("--baselines", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--views", type=int, default=None)
    _add_common(p)

    p = commands.add_parser("ablation", help="train and score every prior variant")
    _add_paths(p, "prepared", "sim", "masks", "work", "out")
    p.add_argument("--views", type=int, default=None)
    _add_common(p)

    p = commands.add_parser("promote", help="register models and move the champion alias")
    p.add_argument("--prepared", type=Path, default=Path("artifacts/prepared"))
    p.add_argument("--models", type=Path, default=Path("artifacts/models"))
    p.add_argument("--evaluations", type=Path, default=Path("reports/views"))
    p.add_argument("--out", type=Path, default=Path("reports/promotion.json"))
    _add_common(p)

    p = commands.add_parser(
        "reconstruct",
        help="reconstruct a scan or sinogram with a model",
        description="Reconstruct a CT scan or sinogram with a trained model or a classical "
        f"method. {RESEARCH_NOTICE}",
    )
    p.add_argument("input", type=Path, help="CT volume/slice, DICOM series, sinogram .npy, "
                                            "or a folder of them")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output .nii.gz (a folder when INPUT is a folder)")
    p.add_argument("--views", type=int, default=None)
    p.add_argument("--model", default=None,
                   help="models:/NAME@champion (default: the sg_unet champion for --views), "
                        "runs:/ID/model, or a checkpoint path")
    p.add_argument("--method", default="model", choices=["model", "fbp", "sirt"])
    p.add_argument("--save-reference", action="store_true",
                   help="also write the input on the model grid as <output stem>_reference")
    _add_common(p)

    p = commands.add_parser("report", help="merged metrics, plot CSVs and report.md")
    p.add_argument("--evaluations", type=Path, required=True,
                   help="folder with one sub-folder per view count")
    p.add_argument("--out", type=Path, required=True, help="report folder (e.g. reports)")
    _add_common(p)
    return parser


def run(args: argparse.Namespace) -> object:
    from sparsect.config import compose, load_params, to_yaml

    if args.command == "params":
        from sparsect.data.store import atomic_write_bytes

        payload = compose(args.conf, args.overrides)
        atomic_write_bytes(args.out, to_yaml(payload).encode())
        return args.out
    if args.command == "train" and args.multirun:
        from sparsect.sweep import multirun

        return multirun(args.overrides, args.prepared, args.masks, sweep_dir=args.sweep_dir)
    cfg = load_params(args.params, args.overrides)
    if args.command == "make-data":
        from sparsect.data.phantom import PhantomConfig, write_dataset

        if args.if_empty and args.out.is_dir() and any(
                p for p in args.out.iterdir() if not p.name.startswith(".")):
            print(f"{args.out} already holds data; not overwriting it")
            return args.out
        phantom = cfg.data.phantom
        config = PhantomConfig(shape=tuple(phantom.shape), spacing_mm=tuple(phantom.spacing_mm))
        return write_dataset(args.out, int(phantom.subjects), int(phantom.seed), config)
    if args.command == "prepare":
        from sparsect.stages.prepare import prepare

        return prepare(cfg, args.data, args.out)
    if args.command == "simulate":
        from sparsect.stages.simulate import simulate

        return simulate(cfg, args.prepared, args.out, args.views, args.workers, args.shard)
    if args.command == "merge-shards":
        from sparsect.stages.simulate import merge_shards

        return merge_shards(args.shards, args.out)
    if args.command == "baselines":
        from sparsect.stages.baselines import baselines

        return baselines(cfg, args.sim, args.out, args.workers)
    if args.command == "masks":
        from sparsect.stages.masks import masks

        return masks(cfg, args.prepared, args.out)
    if args.command == "train":
        from sparsect.stages.train import train

        if args.sim is None or args.out is None:
            raise InputError("train needs --sim and --out (or -m for a Hydra sweep).")
        models = tuple(args.models.split(",")) if args.models else None
        return train(cfg, args.prepared, args.sim, args.masks, args.out, args.views, models)
    if args.command == "evaluate":
        from sparsect.stages.evaluate import evaluate

        return evaluate(cfg, args.prepared, args.sim, args.masks, args.models, args.out,
                        args.views, args.baselines)
    if args.command == "ablation":
        from sparsect.stages.ablation import ablation

        return ablation(cfg, args.prepared, args.sim, args.masks, args.work, args.out,
                        args.views)
    if args.command == "promote":
        from sparsect.stages.promote import promote_all

        return promote_all(cfg, args.prepared, args.models, args.evaluations, args.out)
    if args.command == "reconstruct":
        import mlflow

        from sparsect.inference import run as reconstruct_run
        from sparsect.registry import model_name, resolve_model_uri
        from sparsect.settings import geometry_from_cfg
        from sparsect.tracking import tracking_uri

        mlflow.set_tracking_uri(tracking_uri(cfg))
        uri = args.model or "models:/{}@champion".format(model_name(
            geometry_from_cfg(cfg, args.views).to_dict(), "sg_unet"))
        return reconstruct_run(args.input, args.output, resolve_model_uri(uri), args.method,
                               args.views, args.save_reference, str(cfg.physics.device))
    if args.command == "report":
        from sparsect.evaluation.report import write_report

        folders = {int(p.name): p for p in sorted(args.evaluations.iterdir())
                   if p.is_dir() and p.name.isdigit() and int(p.name) in cfg.sweep.views}
        return write_report(folders, args.out)
    raise AssertionError(args.command)


def _close_progress_bars() -> None:
    """Ends any progress bar the error interrupted, so the message gets a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    unknown = [e for e in extras if e.startswith("-") or "=" not in e]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} "
                     "(config overrides are written key=value)")
    args.overrides = extras
    debug = args.debug or os.environ.get("HYDRA_FULL_ERROR") == "1"
    try:
        run(args)
    except InputError as error:
        if debug:
            raise
        _close_progress_bars()
        print(f"sparsect {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sparsect {args.command}: interrupted; no partial output was kept.",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
