"""``sparsect export``: a model's network as ONNX, checked, quantized and registered.

For one model (a ``models:/`` URI, ``runs:/`` URI or checkpoint) an export folder holds

- ``model.onnx``: the float graph (:mod:`sparsect.models.runtime`; opset ``deploy.opset``);
- ``model.int8.onnx``: the graph quantized to INT8, its activation ranges calibrated on
  ``deploy.int8.calibration_slices`` validation slices (never the test split);
- ``export.json``: the input/output contract (HU in, HU out, grid, view count, geometry,
  noise and acquisition the model expects), the weights' digest, and what was measured
  on the validation split: the largest difference from torch (``parity``) and the
  PSNR the INT8 graph loses against the reference, mean and worst slice (``int8``).

An export whose float graph differs from torch by more than ``deploy.parity_hu`` on any
validation pixel is refused, and nothing is written. For a registry model the folder is
logged to the version's run (``onnx/v<version>/``) and the version is tagged with its
location, opset, parity and INT8 figures. ``sparsect reconstruct --runtime onnx`` reads
it from there.

The pipeline's ``export`` stage exports the champions of ``reports/promotion.json``
(those of the variants in ``deploy.models``); models that cannot be one ONNX graph
(``operator: true``) are listed with the reason.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from sparsect.data.store import atomic_dir, atomic_write_json, load_array, read_json
from sparsect.errors import InputError
from sparsect.evaluation.metrics import psnr_hu
from sparsect.methods.case import Case
from sparsect.methods.learned import Learned
from sparsect.methods.prior import PriorCase
from sparsect.models.module import ReconModule
from sparsect.models.predict import MIRROR_AVERAGE
from sparsect.models.runtime import (
    INT8_OPS,
    OnnxModule,
    Recorder,
    check_calibration,
    check_exportable,
    export_onnx,
    input_names,
    output_names,
    prior_channels,
    quantize_int8,
    weights_digest,
)
from sparsect.physics import Geometry
from sparsect.physics.acquisition import Acquisition
from sparsect.registry import model_version, resolve_model_uri

FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
CONTRACT = "export.json"
TAG = "onnx"
"""Model-version tag holding the ``runs:/`` location of the version's export folder."""


@dataclass(frozen=True)
class Validation:
    """The validation split at one view count: FBP slices, their index, references."""

    fbp: np.ndarray
    index: list
    target: np.ndarray
    prior: np.ndarray | None = None
    """The earlier scan registered to each slice, for a model that reads one."""
    organs: np.ndarray | None = None

    def case(self, acquisition: Acquisition, picks: np.ndarray | None = None) -> PriorCase:
        """The slices (``picks``, default all) as a case for the model's methods."""
        rows = np.arange(len(self.fbp)) if picks is None else np.asarray(picks)
        return PriorCase(self.fbp[rows], None, acquisition,
                         index=[self.index[i] for i in rows],
                         prior=None if self.prior is None else self.prior[rows],
                         prior_organs=None if self.organs is None else self.organs[rows])

    @classmethod
    def load(cls, prepared_dir: Path, sim_dir: Path, geometry: Geometry) -> Validation:
        header = Path(sim_dir) / "geometry.json"
        if not header.is_file():
            raise InputError(f"Simulation folder '{sim_dir}' has no geometry.json: run "
                             f"`sparsect simulate --views {geometry.views}` first.")
        simulated = Geometry.from_dict(read_json(header)["geometry"])
        if simulated != geometry:
            raise InputError(f"Simulation folder '{sim_dir}' holds geometry "
                             f"{simulated.to_dict()} but the model expects "
                             f"{geometry.to_dict()}: point --sim at the model's simulation.")
        rows = read_json(Path(sim_dir) / "val" / "slices.json")
        index = read_json(Path(prepared_dir) / "val" / "index.json")
        return cls(np.array(load_array(Path(sim_dir) / "val", "fbp")),
                   [tuple(index[row]) for row in rows],
                   np.array(load_array(Path(prepared_dir) / "val", "hu"))[rows])


def contract(module: ReconModule) -> dict[str, Any]:
    """What a caller of the graph must feed and gets back (see
    :mod:`sparsect.models.runtime`)."""
    acquisition = Acquisition.of_module(module)
    geometry = acquisition.geometry.to_dict()
    size, classes = int(geometry["image_size"]), int(module.hparams.num_classes)
    inputs = {"fbp": {"shape": ["batch", module.context, size, size], "dtype": "float32",
                      "units": "HU",
                      "meaning": f"FBP ({acquisition.filter} filter) of the "
                                 "slice, with its axial neighbours as channels"
                                 if module.context > 1 else "FBP of the slice"}}
    if "prior" in input_names(module) and str(module.hparams.prior) == "scan":
        inputs["prior"] = {"shape": ["batch", prior_channels(module), size, size],
                           "dtype": "float32",
                           "units": f"channel 0: HU / {module.hparams.hu_scale}; then one-hot",
                           "meaning": "the earlier scan registered to the slice, then its "
                                      "organ map (the segmenter's classes): "
                                      "sparsect.priors.organs.scan_prior"}
    elif "prior" in input_names(module):
        inputs["prior"] = {"shape": ["batch", classes, size, size], "dtype": "float32",
                           "units": "one-hot", "meaning": "HU-threshold tissue classes of the "
                                                          "FBP (sparsect.priors.masks)"}
    outputs = {"recon": {"shape": ["batch", 1, size, size], "dtype": "float32", "units": "HU"}}
    if "probs" in output_names(module):
        outputs["probs"] = {"shape": ["batch", classes, size, size], "dtype": "float32",
                            "units": "probability", "meaning": "predicted tissue classes"}
    return {
        "inputs": inputs, "outputs": outputs,
        "intensity": f"HU in and out; inside, network units = HU / {module.hparams.hu_scale}",
        "hu_scale": float(module.hparams.hu_scale),
        "grid": {"image_size": size, "pixel_size_mm": float(geometry["pixel_size_mm"])},
        "views": int(geometry["views"]),
        "geometry": geometry,
        "noise": asdict(acquisition.noise),
        "acquisition": acquisition.record(),
        "application": ("sparsect.models.predict.predict: edge slices repeat at a volume's ends"
                        + ("; the output is the mean of the slice's and its left-right mirror's "
                           "(mirrored back)" if MIRROR_AVERAGE else "")),
        "data_consistency": (None if not module.hparams.get("dc") else
                             {**dict(module.hparams.dc),
                              "where": "after the graph, in torch with the CT operator (--dc)"}),
    }


def network_inputs(module: ReconModule, case: Case) -> list[dict]:
    """The graph inputs the model's application gives the network for ``case`` (one feed
    per network input slice, mirrored halves too): the INT8 calibration set."""
    recorder = Recorder(module)
    Learned("calibration", recorder).reconstruct(case)
    return recorder.feeds


def followup_validation(cfg: DictConfig, module: ReconModule, followup_dir: Path | None,
                        segmenter_dir: Path | None) -> Validation:
    """For a model that reads an earlier scan: the validation follow-up pairs at the
    model's view count, acquired and registered as ``followup@V`` does, with the
    segmenter's organ maps (``prior`` and ``organs`` of the returned validation)."""
    from sparsect.settings import workers_from_cfg
    from sparsect.stages.followup import PRESENT, acquire, load_pairs, registered_priors

    name = module.hparams.get("variant") or "this model"
    if followup_dir is None or segmenter_dir is None:
        raise InputError(f"Model '{name}' reads an earlier scan: its export is checked on the "
                         "validation follow-up pairs; give --followup (followup_cohort's "
                         "output) and --segmenter.")
    views = int(Acquisition.of_module(module).geometry.views)
    pairs = load_pairs(followup_dir, "val")
    scans = acquire(cfg, pairs, views, 1, "val")
    fixed = scans.fbp[PRESENT, 0]
    priors = registered_priors(cfg, pairs, scans, fixed, Path(segmenter_dir) / "segmenter.ckpt",
                               workers_from_cfg(cfg))
    shape = (-1, *fixed.shape[-2:])
    s, z = fixed.shape[:2]
    return Validation(fixed.reshape(shape), [(f"pair_{i}", j) for i in range(s) for j in range(z)],
                      (pairs.followup_hu + pairs.new_hu).reshape(shape),
                      priors["prior"].reshape(shape), priors["organs"].reshape(shape))


def _psnr(images: np.ndarray, target: np.ndarray, cfg: DictConfig) -> np.ndarray:
    return psnr_hu(torch.from_numpy(np.asarray(images, np.float32)), torch.from_numpy(target),
                   float(cfg.evaluate.hu_min), float(cfg.evaluate.hu_max)).numpy()


def export_model(cfg: DictConfig, module: ReconModule, prepared_dir: Path, sim_root: Path,
                 out_dir: Path, source: str, followup_dir: Path | None = None,
                 segmenter_dir: Path | None = None) -> dict[str, Any]:
    """Exports ``module`` (read from ``source``) into ``out_dir`` (see the module
    docstring); returns the contents of its ``export.json``. A model that reads an
    earlier scan is checked and calibrated on the validation follow-up pairs
    (:func:`followup_validation`), the others on the validation split.

    Raises:
        InputError: a model that cannot be exported, missing validation data, or a
            float graph that misses ``deploy.parity_hu``; ``out_dir`` is then untouched.
    """
    settings = cfg.deploy
    check_exportable(module)
    check_calibration(str(settings.int8.calibration))
    module = module.cpu().eval()
    acquisition = Acquisition.of_module(module)
    geometry = acquisition.geometry
    if str(module.hparams.prior) == "scan":
        val = followup_validation(cfg, module, followup_dir, segmenter_dir)
    else:
        val = Validation.load(prepared_dir, Path(sim_root) / str(geometry.views), geometry)
    name = module.hparams.get("variant") or "model"
    with atomic_dir(Path(out_dir)) as tmp:
        float_path = export_onnx(module, tmp / FILES["onnx"], int(settings.opset))
        case = val.case(acquisition)
        reference = Learned(name, module).reconstruct(case)
        exported = Learned(name, OnnxModule(module, float_path)).reconstruct(case)
        max_abs = float(np.abs(exported - reference).max())
        limit = float(settings.parity_hu)
        if not max_abs <= limit:
            raise InputError(f"The ONNX graph of '{source}' differs from torch by {max_abs:.3g} "
                             f"HU on the validation slices (limit deploy.parity_hu = {limit}): "
                             "run it with --runtime torch and report the model.")
        int8 = settings.int8
        picks = np.unique(np.linspace(0, len(val.fbp) - 1,
                                      min(int(int8.calibration_slices), len(val.fbp))).round()
                          .astype(int))
        feeds = network_inputs(module, val.case(acquisition, picks))
        kept = quantize_int8(float_path, tmp / FILES["onnx-int8"], feeds,
                             str(int8.calibration), tuple(INT8_OPS), bool(int8.reduce_range))
        quantized = Learned(name, OnnxModule(module, tmp / FILES["onnx-int8"], "onnx-int8")
                            ).reconstruct(case)
        drop = _psnr(exported, val.target, cfg) - _psnr(quantized, val.target, cfg)
        worst = int(np.argmax(drop))
        record = {
            "model": name, "source": source, "weights_sha256": weights_digest(module),
            "format": "onnx", "opset": int(settings.opset), "files": FILES,
            **contract(module),
            "parity": {"split": "val" if val.prior is None else "validation follow-up pairs",
                       "slices": len(val.fbp), "max_abs_hu": max_abs,
                       "limit_hu": limit, "against": "torch, through predict()"},
            "int8": {
                "format": "QDQ: per-channel int8 weights"
                          + (" (7-bit range)" if bool(int8.reduce_range) else "")
                          + ", uint8 activations",
                "quantized_ops": list(INT8_OPS),
                "kept_in_float": ["InstanceNormalization (GroupNorm), Sigmoid and Mul (SiLU), "
                                  "Softmax: no INT8 kernel", *kept],
                "calibration": {"split": "val", "slices": len(picks), "network_inputs":
                                len(feeds), "method": str(int8.calibration)},
                "psnr_drop_db": float(drop.mean()),
                "worst_psnr_drop_db": float(drop[worst]),
                "worst_slice": list(val.index[worst]),
                "max_abs_hu_vs_float": float(np.abs(quantized - exported).max()),
                "split": "val",
            },
            "versions": {name: package_version(name)
                         for name in ("torch", "onnx", "onnxruntime", "onnxscript")},
        }
        atomic_write_json(tmp / CONTRACT, record)
    print(f"[export] {source}: ONNX opset {record['opset']}, max |onnx - torch| "
          f"{max_abs:.4f} HU on {len(val.fbp)} validation slices; INT8 loses "
          f"{record['int8']['psnr_drop_db']:.3f} dB (worst slice "
          f"{record['int8']['worst_psnr_drop_db']:.3f} dB)")
    return record


def log_export(cfg: DictConfig, uri: str, folder: Path, record: dict[str, Any]) -> str:
    """Logs export ``folder`` to the run of registry version ``uri`` and tags the version
    with it; returns the ``runs:/`` location."""
    import mlflow

    from sparsect.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(cfg))
    version = model_version(uri)
    client = mlflow.MlflowClient()
    run_id = version.run_id
    if not run_id:
        run_id = client.create_run(client.get_experiment_by_name("Default").experiment_id,
                                   run_name=f"export {version.name}").info.run_id
    artifact_path = f"onnx/v{version.version}"
    client.log_artifacts(run_id, str(folder), artifact_path)
    location = f"runs:/{run_id}/{artifact_path}"
    interface = {key: record[key] for key in ("inputs", "outputs", "intensity", "grid", "views",
                                              "geometry")}
    tags = {TAG: location, "onnx_opset": str(record["opset"]),
            "onnx_max_abs_hu": f"{record['parity']['max_abs_hu']:.6g}",
            "onnx_contract": json.dumps(interface, sort_keys=True),
            "int8_psnr_drop_db": f"{record['int8']['psnr_drop_db']:.6g}",
            "int8_worst_psnr_drop_db": f"{record['int8']['worst_psnr_drop_db']:.6g}",
            "onnx_weights_sha256": record["weights_sha256"]}
    for key, value in tags.items():
        client.set_model_version_tag(version.name, version.version, key, value)
    return location


def export(cfg: DictConfig, uri: str, prepared_dir: Path, sim_root: Path,
           out_dir: Path, followup_dir: Path | None = None,
           segmenter_dir: Path | None = None) -> dict[str, Any]:
    """``sparsect export --model URI``: export, then register when ``uri`` is a registry
    version."""

    module = resolve_model_uri(cfg, uri)
    record = export_model(cfg, module, prepared_dir, sim_root, out_dir, uri, followup_dir,
                          segmenter_dir)
    if uri.startswith("models:/"):
        record["registered"] = log_export(cfg, uri, Path(out_dir), record)
        print(f"[export] logged to {record['registered']} and tagged on {uri}")
    return record


def export_champions(cfg: DictConfig, promotion: Path, prepared_dir: Path, sim_root: Path,
                     out_root: Path, summary_path: Path, followup_dir: Path | None = None,
                     segmenter_dir: Path | None = None) -> dict[str, Any]:
    """The ``export`` stage: every champion of ``promotion`` (``sparsect promote``'s
    output) exported into ``out_root/<views>/<model>/`` and logged to its version; the
    figures of all of them in ``summary_path``."""
    from sparsect.models.variants import known_variant, variant_table

    table = variant_table(cfg)
    chosen = cfg.deploy.get("models")
    for name in chosen or ():
        known_variant(table, str(name))
    summary: dict[str, Any] = {"opset": int(cfg.deploy.opset), "exports": [], "skipped": []}
    with atomic_dir(Path(out_root)) as tmp:
        for decision in read_json(Path(promotion))["decisions"]:
            if chosen is not None and decision["model"] not in chosen:
                continue
            uri = f"models:/{decision['name']}/{decision['champion']}"
            entry = {"views": int(decision["views"]), "model": decision["model"], "uri": uri}
            if known_variant(table, decision["model"]).operator:
                summary["skipped"].append({**entry, "reason": "applies the CT operator inside "
                                           "its network (operator: true): torch only"})
                continue
            folder = tmp / str(decision["views"]) / decision["model"]
            record = export(cfg, uri, prepared_dir, sim_root, folder, followup_dir,
                            segmenter_dir)
            summary["exports"].append({
                **entry, "folder": str(Path(out_root) / folder.relative_to(tmp)),
                "onnx_max_abs_hu": record["parity"]["max_abs_hu"],
                "int8_psnr_drop_db": record["int8"]["psnr_drop_db"],
                "int8_worst_psnr_drop_db": record["int8"]["worst_psnr_drop_db"],
                "int8_worst_slice": record["int8"]["worst_slice"],
                "split": "val"})
    atomic_write_json(Path(summary_path), summary)
    return summary


def runtime_module(cfg: DictConfig, module: ReconModule, runtime: str, uri: str,
                   export_dir: Path | None = None) -> ReconModule | OnnxModule:
    """``module`` itself (``runtime="torch"``), or the model with its network on the ONNX
    graph of ``runtime`` from ``export_dir`` (default: the export logged to registry
    version ``uri``).

    Raises:
        InputError: an unknown runtime, no export to read, or an export of other weights.
    """
    from sparsect.models.runtime import RUNTIMES

    if runtime not in RUNTIMES:
        raise InputError(f"Runtime '{runtime}' is unknown: use one of {', '.join(RUNTIMES)}.")
    if runtime == "torch":
        if export_dir is not None:
            raise InputError("--export is read by --runtime onnx or onnx-int8: add one, or "
                             "drop --export.")
        return module
    check_exportable(module)
    folder = Path(export_dir) if export_dir is not None else _registered_export(cfg, uri)
    record_path = folder / CONTRACT
    if not record_path.is_file():
        raise InputError(f"Folder '{folder}' holds no {CONTRACT}: give the folder "
                         "`sparsect export --out` wrote.")
    record = read_json(record_path)
    if record.get("weights_sha256") != weights_digest(module):
        raise InputError(f"Export '{folder}' was made from other weights than model '{uri}': "
                         f"export this model with `sparsect export --model {uri}`.")
    return OnnxModule(module, folder / record["files"][runtime], runtime)


def _registered_export(cfg: DictConfig, uri: str) -> Path:
    """The local copy of the export logged to registry version ``uri``."""
    if not uri.startswith("models:/"):
        raise InputError(f"--runtime onnx needs the ONNX export of '{uri}': run `sparsect "
                         f"export --model {uri} --out DIR` and pass --export DIR.")
    import mlflow

    from sparsect.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(cfg))
    version = model_version(uri)
    location = version.tags.get(TAG)
    if not location:
        raise InputError(f"Model '{uri}' (version {version.version}) has no ONNX export in the "
                         f"registry: run `sparsect export --model {uri}` first.")
    return Path(mlflow.artifacts.download_artifacts(location))
