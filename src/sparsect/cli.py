"""Command line: ``sparsect <command> [options] [key=value overrides]``.

Each subcommand is its arguments and a handler beside them; a handler reads
``params.yaml`` (``--params``) and calls the module that does the work. Stage
commands take every input and output path as a required option, so ``dvc.yaml``
is the one place that names them. A mistake the user can fix ends in one
sentence and exit code 2; pass ``--debug`` (or set ``HYDRA_FULL_ERROR=1``) for
the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from sparsect.errors import InputError
from sparsect.notice import RESEARCH_NOTICE

Handler = Callable[[argparse.Namespace], object]


def _cfg(args: argparse.Namespace):  # noqa: ANN202 - DictConfig, imported lazily
    from sparsect.config import load_params

    return load_params(args.params, args.overrides)


def _command(commands: argparse._SubParsersAction, name: str, handler: Handler, help: str,  # noqa: A002
             paths: tuple[str, ...] = (), **kwargs: object) -> argparse.ArgumentParser:
    """A subcommand with ``--params``/``--debug``, required path options named as in
    dvc.yaml, and ``handler`` as ``args.func``."""
    parser = commands.add_parser(name, help=help, **kwargs)
    for path in paths:
        parser.add_argument(f"--{path}", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="parameter file (default: params.yaml)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(func=handler)
    return parser


def _params(args: argparse.Namespace) -> object:
    from sparsect.config import write_params

    return write_params(args.conf, args.out, args.overrides)


def _stage_out(args: argparse.Namespace) -> object:
    from sparsect.pipeline import stage_output, stage_outputs

    if args.overrides:
        raise InputError(f"sparsect stage-out takes stage names, not overrides "
                         f"({' '.join(args.overrides)}): give stages such as prepare or "
                         "train@30.")
    outputs = stage_outputs()
    paths = [path for stage in args.stages
             if not (args.optional and stage not in outputs)
             for path in stage_output(stage, outputs)]
    print("\n".join(paths))
    return paths


def _recover(args: argparse.Namespace) -> object:
    from sparsect.pipeline import recover

    if args.overrides:
        raise InputError(f"sparsect recover takes no overrides ({' '.join(args.overrides)}): "
                         "run it as it is, from the project root.")
    done = recover()
    print("\n".join(done) if done else "DVC's state is intact: nothing to recover")
    return done


def _make_data(args: argparse.Namespace) -> object:
    from sparsect.stages.make_data import make_data

    return make_data(_cfg(args), args.out, args.if_empty)


def _prepare(args: argparse.Namespace) -> object:
    from sparsect.stages.prepare import prepare

    return prepare(_cfg(args), args.data, args.out)


def _simulate(args: argparse.Namespace) -> object:
    from sparsect.stages.simulate import simulate

    return simulate(_cfg(args), args.prepared, args.out, args.views, args.workers, args.shard)


def _merge_shards(args: argparse.Namespace) -> object:
    from sparsect.stages.simulate import merge_shards

    return merge_shards(args.shards, args.out)


def _baselines(args: argparse.Namespace) -> object:
    from sparsect.stages.baselines import baselines

    return baselines(_cfg(args), args.sim, args.out, args.prepared, args.workers)


def _masks(args: argparse.Namespace) -> object:
    from sparsect.stages.masks import masks

    return masks(_cfg(args), args.prepared, args.out)


def _segmenter(args: argparse.Namespace) -> object:
    from sparsect.stages.segmenter import segmenter

    return segmenter(_cfg(args), args.prepared, args.out)


def _sweep(args: argparse.Namespace) -> object:
    from sparsect.sweep import multirun

    return multirun(args.overrides, args.prepared, args.masks, sweep_dir=args.sweep_dir)


def _train(args: argparse.Namespace) -> object:
    if args.multirun:  # not a DVC stage: its imports are _sweep's
        return _sweep(args)
    from sparsect.stages.train import train

    if args.sim is None or args.out is None:
        raise InputError("train needs --sim and --out (or -m for a Hydra sweep).")
    models = tuple(args.models.split(",")) if args.models else None
    return train(_cfg(args), args.prepared, args.sim, args.masks, args.out, args.views, models)


def _evaluate(args: argparse.Namespace) -> object:
    from sparsect.stages.evaluate import evaluate

    return evaluate(_cfg(args), args.prepared, args.sim, args.masks, args.models, args.out,
                    args.views, args.baselines, args.cohort, args.segmenter,
                    images_dir=args.images)


def _cohort(args: argparse.Namespace) -> object:
    from sparsect.stages.cohort import cohort

    return cohort(_cfg(args), args.out, args.workers)


def _followup_cohort(args: argparse.Namespace) -> object:
    from sparsect.stages.followup_cohort import followup_cohort

    return followup_cohort(_cfg(args), args.out, args.workers)


def _followup(args: argparse.Namespace) -> object:
    from sparsect.stages.followup import followup

    followup(_cfg(args), args.cohort, args.views, args.out, args.models, args.images,
             args.scans, args.prior_models, args.segmenter)
    return args.out


def _followup_train(args: argparse.Namespace) -> object:
    from sparsect.stages.followup_train import followup_train

    return followup_train(_cfg(args), args.cohort, args.segmenter, args.views, args.out)


def _external(args: argparse.Namespace) -> object:
    from sparsect.stages.external import external

    return external(_cfg(args), args.scans, args.models, args.baselines, args.out, args.views,
                    args.workers, args.images)


def _followup_endpoint(args: argparse.Namespace) -> object:
    from sparsect.stages.followup_endpoint import followup_endpoint

    followup_endpoint(_cfg(args), args.cohort, args.segmenter, args.prepared, args.sim,
                      args.masks, args.models, args.work, args.out)
    return args.out


def _ablation(args: argparse.Namespace) -> object:
    from sparsect.stages.ablation import ablation

    return ablation(_cfg(args), args.prepared, args.sim, args.masks, args.work, args.out,
                    args.cohort, args.segmenter)


def _promote(args: argparse.Namespace) -> object:
    from sparsect.stages.promote import promote_all

    return promote_all(_cfg(args), args.prepared, args.models, args.evaluations, args.out,
                       args.followup_models, args.followup_cohort, args.followup_reports)


def _seeds(args: argparse.Namespace) -> object:
    from sparsect.stages.seeds import compare_seeds

    models = args.models.split(",")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise InputError(f"--seeds '{args.seeds}' must be integers, comma-separated.") from None
    if len(models) != 2:
        raise InputError(f"--models '{args.models}' must name two models, A,B (reports A - B).")
    return compare_seeds(args.evaluations, seeds, *models, args.out)


def _ellipses(args: argparse.Namespace) -> object:
    from sparsect.benchmarks.ellipses import run_benchmark

    return run_benchmark(_cfg(args), args.out)


def _report(args: argparse.Namespace) -> object:
    from sparsect.stages.report import report

    return report(_cfg(args), args.evaluations, args.out, args.external, args.followup)


def _export(args: argparse.Namespace) -> object:
    from sparsect.deploy import export, export_champions

    cfg = _cfg(args)
    if args.promotion is not None:
        if args.model is not None or args.summary is None:
            raise InputError("--promotion exports every champion it lists into --out, with "
                             "--summary: drop --model and give --summary.")
        return export_champions(cfg, args.promotion, args.prepared, args.sim, args.out,
                                args.summary, args.followup, args.segmenter)
    from sparsect.registry import champion_uri

    return export(cfg, args.model or champion_uri(cfg, args.views), args.prepared, args.sim,
                  args.out, args.followup, args.segmenter)


def _options(pairs: list[str]) -> dict[str, object] | None:
    """``--option KEY=VALUE`` pairs as settings (values read as YAML: numbers stay numbers,
    and so does ``1e-3``, which YAML 1.1 would keep as text); None when none is given."""
    import yaml

    if not pairs:
        return None
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--option '{pair}' is not KEY=VALUE: write e.g. --option "
                             "iterations=100.")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        options[key] = parsed
    return options


def _reconstruct(args: argparse.Namespace) -> object:
    from sparsect.data.io import spacing_override
    from sparsect.inference import PriorMap, reconstruct_files

    if args.prior is None and args.prior_oracle:
        raise InputError("--prior-oracle describes the map given with --prior: add --prior "
                         "LABELMAP or drop --prior-oracle.")
    prior = (None if args.prior is None
             else PriorMap(args.prior, args.prior_table, args.prior_oracle))
    if args.runtime != "torch" and args.method != "model":
        raise InputError(f"--runtime {args.runtime} runs a model's network, not --method "
                         f"{args.method}: drop --runtime or use --method model.")
    if args.option and args.method == "model":
        raise InputError("--option sets a classical method's settings: add --method (e.g. "
                         "--method tv) or drop --option.")
    with spacing_override(args.spacing, args.input):
        written = reconstruct_files(_cfg(args), args.input, args.output, args.model,
                                    args.method, args.views, args.save_reference, args.series,
                                    args.dc, prior, args.runtime, args.export,
                                    _options(args.option), args.prior_scan, args.segmenter,
                                    args.jobs, args.threads, args.devices, args.num_nodes)
    if prior is not None and prior.oracle:
        print(f"oracle: the map was made from this scan ({prior.path}), so the reconstruction "
              "is an upper bound, not what a new scan would get.")
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsect",
        description=f"sparse-view CT: simulate, train, evaluate, register. {RESEARCH_NOTICE}",
        epilog="Config overrides are given as key=value after the command.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = _command(commands, "params", _params, "compose conf/ into params.yaml")
    p.add_argument("--conf", type=Path, default=Path("conf"))
    p.add_argument("--out", type=Path, default=Path("params.yaml"))

    p = _command(commands, "stage-out", _stage_out,
                 "print the outputs of pipeline stages, as dvc.yaml names them")
    p.add_argument("stages", nargs="+", help="stage addresses: prepare, simulate@30, ...")
    p.add_argument("--optional", action="store_true",
                   help="print nothing for a stage dvc.yaml does not have")

    _command(commands, "recover", _recover,
             "repair the DVC state a hard kill of dvc repro can leave, then rerun it")

    _add_stage_commands(commands)
    _add_user_commands(commands)
    return parser


def _add_stage_commands(commands: argparse._SubParsersAction) -> None:
    """The pipeline's commands (what ``dvc.yaml`` runs, sharding and the ablation)."""
    p = _command(commands, "make-data", _make_data, "write the built-in phantom scans",
                 paths=("out",))
    p.add_argument("--if-empty", action="store_true",
                   help="do nothing if the folder already holds files")

    _command(commands, "prepare", _prepare, "scans -> standardised slices, split by subject",
             paths=("data", "out"))

    p = _command(commands, "simulate", _simulate, "sparse-view sinograms and FBP",
                 paths=("prepared", "out"))
    p.add_argument("--views", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--images", type=Path, default=None, metavar="DIR",
                   help="also write every method's images of each scan (<scan>/<method>.npy)")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="simulate only the subjects of shard K of N (cluster array jobs)")

    p = _command(commands, "merge-shards", _merge_shards, "assemble `simulate --shard` outputs",
                 paths=("out",))
    p.add_argument("shards", type=Path, nargs="+")

    p = _command(commands, "baselines", _baselines,
                 "FBP, SIRT and TV of the held-out split, each with the setting that scores "
                 "highest on the validation split", paths=("prepared", "sim", "out"))
    p.add_argument("--workers", type=int, default=None)

    _command(commands, "masks", _masks, "tissue-class masks of the full-dose slices",
             paths=("prepared", "out"))

    _command(commands, "segmenter", _segmenter,
             "the fixed organ segmenter of the task-based metric (full-dose train slices)",
             paths=("prepared", "out"))

    p = _command(commands, "train", _train,
                 "train the variants at one view count (-m: Hydra multirun sweep)",
                 paths=("prepared", "masks"))
    p.add_argument("-m", "--multirun", action="store_true",
                   help="Hydra multirun over conf/ with sweep overrides, e.g. "
                        "geometry.views=30,60,120 (simulate, train, evaluate per job)")
    p.add_argument("--sim", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--sweep-dir", type=Path, default=Path("multirun"))
    p.add_argument("--views", type=int, default=None)
    p.add_argument("--models", default=None,
                   help="comma-separated names from the variants table (default: unet and "
                        "the variants of prior.variant)")

    p = _command(commands, "evaluate", _evaluate,
                 "test-split metrics and panels at one view count",
                 paths=("prepared", "sim", "masks", "models", "out"))
    p.add_argument("--baselines", type=Path, default=None)
    p.add_argument("--views", type=int, default=None)
    p.add_argument("--images", type=Path, default=None, metavar="DIR",
                   help="also write every method's images: test/<method>.npy, and the task "
                        "study's as study/<method>.npy")
    p.add_argument("--cohort", type=Path, default=None,
                   help="the task cohort (`sparsect cohort`): adds the lesion, structure and "
                        "(with --segmenter) downstream-segmentation scores")
    p.add_argument("--segmenter", type=Path, default=None,
                   help="the frozen organ segmenter (`sparsect segmenter`)")

    p = _command(commands, "cohort", _cohort,
                 "the task study's lesion-free subjects and their lesions", paths=("out",))
    p.add_argument("--workers", type=int, default=None)

    p = _command(commands, "followup-cohort", _followup_cohort,
                 "the follow-up cohort: baseline and follow-up scans of one anatomy",
                 paths=("out",))
    p.add_argument("--workers", type=int, default=None)

    p = _command(commands, "followup-train", _followup_train,
                 "trains the models that read an earlier scan, on the follow-up training pairs",
                 paths=("cohort", "segmenter", "out"))
    p.add_argument("--views", type=int, required=True)

    p = _command(commands, "followup", _followup,
                 "every method with and without the earlier scan, on the follow-up cohort",
                 paths=("cohort", "out"))
    p.add_argument("--views", type=int, required=True)
    p.add_argument("--models", type=Path, default=None,
                   help="a train@<views> output: its followup.learned models without a prior "
                        "(none without)")
    p.add_argument("--images", type=Path, default=None, metavar="DIR",
                   help="also write every method's images as DIR/<method>.npy")
    p.add_argument("--scans", type=Path, default=None,
                   help="real scans (realct/): a pair made from each, scored per scan")
    p.add_argument("--prior-models", type=Path, default=None,
                   help="a followup_train@<views> output: its models that read the earlier "
                        "scan (with --segmenter)")
    p.add_argument("--segmenter", type=Path, default=None,
                   help="the segmenter stage's output: the organ map of the earlier scan")

    p = _command(commands, "external", _external,
                 "every method on the real scans (external validation) at one view count",
                 paths=("scans", "models", "baselines", "out"))
    p.add_argument("--views", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--images", type=Path, default=None, metavar="DIR",
                   help="also write every method's images of each scan (<scan>/<method>.npy)")

    p = _command(commands, "followup-endpoint", _followup_endpoint,
                 "the learned prior model's pre-stated endpoint against its comparator, "
                 "over seeds, on the whole follow-up cohort (followup.endpoint)",
                 paths=("cohort", "segmenter", "prepared", "sim", "masks", "work", "out"))
    p.add_argument("--models", type=Path, default=None,
                   help="the train@<views> output whose comparator checkpoint stands for "
                        "the config's seed (else it is trained too)")

    p = _command(commands, "ablation", _ablation,
                 "train and score every variant at each view count and seed of `ablation`",
                 paths=("prepared", "sim", "masks", "work", "out"))
    p.add_argument("--cohort", type=Path, default=None,
                   help="the task cohort: task metrics and the primary endpoint")
    p.add_argument("--segmenter", type=Path, default=None,
                   help="the frozen organ segmenter (the endpoint's downstream Dice)")

    p = _command(commands, "promote", _promote, "register models and move the champion alias",
                 paths=("prepared", "models", "evaluations", "out"))
    p.add_argument("--followup-models", type=Path, default=None,
                   help="followup_train outputs per view count: the models that read an "
                        "earlier scan, judged on the validation follow-up pairs")
    p.add_argument("--followup-cohort", type=Path, default=None,
                   help="followup_cohort's output (their validation pairs)")
    p.add_argument("--followup-reports", type=Path, default=None,
                   help="followup@<views> results per view count (test metrics, recorded)")

    p = _command(commands, "export", _export,
                 "a model's network as ONNX (checked against torch) and INT8 (calibrated "
                 "on validation), logged to its registry version", paths=("prepared", "sim", "out"))
    p.add_argument("--model", default=None,
                   help="models:/NAME@ALIAS or models:/NAME/VERSION (logged to that version), "
                        "runs:/ID/model or a checkpoint (default: the sg_unet champion for "
                        "--views)")
    p.add_argument("--views", type=int, default=None)
    p.add_argument("--promotion", type=Path, default=None,
                   help="`sparsect promote`'s output: export every champion it lists into "
                        "--out/<views>/<model> (the export stage)")
    p.add_argument("--summary", type=Path, default=None,
                   help="with --promotion: where the figures of every export are written")
    p.add_argument("--followup", type=Path, default=None,
                   help="followup_cohort's output: a model that reads an earlier scan is "
                        "checked and calibrated on its validation pairs (with --segmenter)")
    p.add_argument("--segmenter", type=Path, default=None,
                   help="the segmenter stage's output (the earlier scan's organ map)")

    _command(commands, "ellipses", _ellipses,
             "dival's ellipses benchmark: FBP, TV, unet and lpd beside the published numbers "
             "(make ellipses)", paths=("out",))

    p = _command(commands, "seeds", _seeds,
                 "two models over training seeds: paired differences (make unrolled)",
                 paths=("out",))
    p.add_argument("--evaluations", type=Path, nargs="+", required=True,
                   help="one `sparsect evaluate` folder per seed")
    p.add_argument("--seeds", required=True, help="the seeds, comma-separated, in that order")
    p.add_argument("--models", required=True, help="A,B: reports A - B")

    p = _command(commands, "report", _report, "merged metrics, plot CSVs and report.md",
                 paths=("evaluations", "out"))
    p.add_argument("--external", type=Path, default=None,
                   help="folder of `sparsect external` results per view count (real scans)")
    p.add_argument("--followup", type=Path, default=None,
                   help="folder of `sparsect followup` results per view count")


def _add_user_commands(commands: argparse._SubParsersAction) -> None:
    """Commands for one's own data: reconstruct a scan or sinogram."""
    from sparsect.methods.names import CLASSICAL
    from sparsect.priors.labels import TABLE_NAMES

    p = _command(
        commands, "reconstruct", _reconstruct, "reconstruct a scan or sinogram with a model",
        description="Reconstruct a CT scan or sinogram with a trained model or a classical "
        f"method. {RESEARCH_NOTICE}",
    )
    p.add_argument("input", type=Path, help="CT volume/slice, DICOM file or folder (any depth), "
                                            "sinogram .npy, or a folder of them")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output .nii.gz (a folder when INPUT is a folder)")
    p.add_argument("--views", type=int, default=None)
    p.add_argument("--model", default=None,
                   help="models:/NAME@champion (default: the sg_unet champion for --views), "
                        "runs:/ID/model, or a checkpoint path")
    p.add_argument("--method", default="model", choices=["model", *CLASSICAL, "piccs"],
                   help="the model, or a classical method with the settings the registry "
                        "version stores (tuned on validation) or those given by --option; "
                        "piccs reads --prior-scan (its settings: those followup@<views> "
                        "chose on validation, or --option)")
    p.add_argument("--prior-scan", type=Path, default=None, metavar="BASELINE",
                   help="an earlier full-dose CT of the patient (NIfTI, NRRD, MHA, DICOM), "
                        "registered to this scan; read by a model that reads an earlier scan "
                        "(default model with it: the champion of followup.model.variants' "
                        "first for --views) or by --method piccs; the registration is "
                        "written to <output stem>.prior.json")
    p.add_argument("--segmenter", type=Path, default=None,
                   help="the segmenter stage's output (default: artifacts/segmenter): the "
                        "organ map of --prior-scan that a model reading it needs")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the classical --method (repeat it), e.g. --option "
                        "weight=0.03 --option iterations=200; replaces the stored settings")
    p.add_argument("--jobs", type=int, default=1,
                   help="for a folder: processes reconstructing its series at once (each "
                        "writes its own; a rerun skips the finished ones; summary.csv lists "
                        "every series)")
    p.add_argument("--devices", type=int, default=None,
                   help="for a folder: run its series through Lightning's predict loop on this "
                        "many devices (GPUs, or CPU processes) per node, DDP when several; "
                        "instead of --jobs")
    p.add_argument("--num-nodes", type=int, default=1,
                   help="with --devices: the machines, launched as for training (torchrun, "
                        "srun)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: torch's; give the same number "
                        "for outputs bit for bit equal between runs with other --jobs)")
    p.add_argument("--save-reference", action="store_true",
                   help="also write the input on the model grid as <output stem>_reference")
    p.add_argument("--series", default=None, metavar="UID-or-NUMBER",
                   help="the DICOM series to reconstruct when the input folder holds several "
                        "(its SeriesInstanceUID or SeriesNumber)")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="voxel size in mm of INPUT's volumes, replacing their headers' (for "
                        "headers without usable spacing; an unusable orientation is then "
                        "taken as canonical: RAS+ arrays, standard axial DICOM slices)")
    p.add_argument("--dc", action="store_true",
                   help="apply the model's data-consistency step after it (the +dc method; "
                        "lambda and steps as chosen on validation after training)")
    p.add_argument("--prior", type=Path, default=None, metavar="LABELMAP",
                   help="label map (NIfTI) of an earlier scan of this patient, registered "
                        "rigidly to this scan's FBP and read by a model trained on external "
                        "masks (prior: oracle, e.g. sg_oracle); writes <output stem>.prior.json")
    p.add_argument("--prior-table", default="totalsegmentator", choices=TABLE_NAMES,
                   help="label values of --prior (default: totalsegmentator)")
    p.add_argument("--runtime", default="torch", choices=["torch", "onnx", "onnx-int8"],
                   help="what runs the network: torch, its ONNX graph or the graph quantized to "
                        "INT8 (onnxruntime, from the export logged to the model's registry "
                        "version, or --export)")
    p.add_argument("--export", type=Path, default=None, metavar="DIR",
                   help="with --runtime onnx|onnx-int8: the folder `sparsect export` wrote "
                        "(needed for a checkpoint; default for a registry model: its logged "
                        "export)")
    p.add_argument("--prior-oracle", action="store_true",
                   help="the --prior map was made from this very scan: recorded as an oracle")


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
        args.func(args)
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
