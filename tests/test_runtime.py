"""The network as an ONNX graph: parity with torch, INT8, the export folder, --runtime."""

from __future__ import annotations

import json
from dataclasses import asdict

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch

from helpers import GEOMETRY, ROOT, save_module, sinograms
from sparsect.cli import main
from sparsect.config import load_params
from sparsect.data.io import axial_slices
from sparsect.data.store import save_array
from sparsect.deploy import CONTRACT, FILES, export_model, network_inputs, runtime_module
from sparsect.errors import InputError
from sparsect.methods.case import Case
from sparsect.models.checkpoint import load_module
from sparsect.models.module import ReconModule
from sparsect.models.predict import predict
from sparsect.models.runtime import (
    OnnxModule,
    export_onnx,
    kept_in_float,
    quantize_int8,
    weights_digest,
)
from sparsect.physics import NoiseModel
from sparsect.physics.acquisition import Acquisition

ACQUISITION = {"upsample": 2, "filter": "ram-lak", "hu_clip": [-1024.0, 3071.0]}


def unet_module() -> ReconModule:
    """A tiny UNet (prior none) with every weight random, the heads too."""
    torch.manual_seed(1)
    module = ReconModule(net={"_target_": "sparsect.models.unet.UNet", "channels": 4,
                              "depth": 3, "in_channels": 3},
                         geometry=GEOMETRY.to_dict(), noise=asdict(NoiseModel(i0=1e5)),
                         acquisition=ACQUISITION)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.2)
    return module.eval()


@pytest.fixture(scope="module")
def fbp() -> np.ndarray:
    module = unet_module()
    return Acquisition.of_module(module, device="cpu").fbp(sinograms())


class CountingSession:
    """An onnxruntime session that counts its runs: the graph, not torch, made the output."""

    def __init__(self, session) -> None:  # noqa: ANN001
        self.session, self.runs = session, 0

    def run(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        self.runs += 1
        return self.session.run(*args, **kwargs)


def models(tmp_path):
    """The three shapes of graph: FBP in (UNet); FBP in, probabilities out too (a
    predicted prior); FBP and threshold classes in."""
    return {
        "none": unet_module(),
        "predicted": load_module(save_module(tmp_path / "p.ckpt", "predicted", 3, True)),
        "threshold": load_module(save_module(tmp_path / "t.ckpt", "threshold", 1, False)),
    }


def test_the_onnx_graph_gives_torch_s_numbers_at_any_batch(tmp_path, fbp):
    for prior, module in models(tmp_path).items():
        path = export_onnx(module, tmp_path / f"{prior}.onnx")
        expected = predict(module, fbp)
        assert not np.allclose(expected.images, fbp, atol=5.0), prior  # the network acts
        graph = OnnxModule(module, path, threads=2)
        graph.session = CountingSession(graph.session)
        graph.workers = [CountingSession(worker) for worker in graph.workers]
        sessions = [graph.session, *graph.workers]
        for batch in (1, 2, 16):  # the batch axis is dynamic: 5 slices in 5, 3 or 1 calls
            runs = [item.runs for item in sessions]
            got = predict(graph, fbp, batch_size=batch)
            # each call (twice per batch, with the mirror) runs the whole session on a
            # single slice, or splits a larger batch between the two one-thread sessions
            calls = [sessions[i].runs - runs[i] for i in range(3)]
            single = sum(1 for start in range(0, len(fbp), batch)
                         if min(batch, len(fbp) - start) < 2)
            assert calls == [2 * single, *(2 * (-(-len(fbp) // batch) - single),) * 2], calls
            assert np.abs(got.images - expected.images).max() < 0.01, (prior, batch)
            if expected.classes is not None:
                assert np.mean(got.classes == expected.classes) > 0.99, prior
        names = [item.name for item in onnx.load(str(path)).graph.input]
        assert names == (["fbp", "prior"] if prior == "threshold" else ["fbp"])


def test_splitting_a_batch_between_sessions_changes_no_value(tmp_path, fbp):
    module = models(tmp_path)["predicted"]
    path = export_onnx(module, tmp_path / "p.onnx")
    split = OnnxModule(module, path, threads=2)
    whole = OnnxModule(module, path, threads=2)
    whole.workers = []
    assert len(split.workers) == 2
    difference = np.abs(predict(split, fbp).images - predict(whole, fbp).images)
    assert difference.max() < 1e-3  # equal here; float rounding may differ elsewhere
    assert OnnxModule(module, path, threads=1).workers == []


def test_models_that_cannot_be_one_graph_are_refused(tmp_path):
    from sparsect.models.lpd import LearnedPrimalDual

    lpd = ReconModule(net={"_target_": "sparsect.models.lpd.LearnedPrimalDual", "channels": 4,
                           "iterations": 2}, variant="lpd", geometry=GEOMETRY.to_dict(),
                      noise=asdict(NoiseModel(i0=1e5)), acquisition=ACQUISITION)
    assert isinstance(lpd.net, LearnedPrimalDual)
    with pytest.raises(InputError, match="applies the CT operator inside its network"):
        export_onnx(lpd, tmp_path / "lpd.onnx")
    oracle = load_module(save_module(tmp_path / "o.ckpt", "oracle", 1, False))
    with pytest.raises(InputError, match="upper bound"):
        export_onnx(oracle, tmp_path / "oracle.onnx")
    assert not list(tmp_path.glob("*.onnx"))


def test_calibration_reads_what_predict_feeds_the_network(fbp):
    module = unet_module()
    feeds = network_inputs(module, Case(fbp, None, None))
    assert len(feeds) == 2 * len(fbp)  # every slice and its mirror image
    first = feeds[0]["fbp"][0]
    assert np.array_equal(first, fbp[[0, 0, 1]])  # the edge slice repeats at the volume's end
    assert any(np.array_equal(feed["fbp"][0], fbp[[0, 0, 1]][..., ::-1]) for feed in feeds)


def test_int8_keeps_the_heads_and_the_residual_path_in_float(tmp_path, fbp):
    module = load_module(save_module(tmp_path / "p.ckpt", "predicted", 3, True))
    path = export_onnx(module, tmp_path / "float.onnx")
    feeds = network_inputs(module, Case(fbp, None, None))
    kept = quantize_int8(path, tmp_path / "int8.onnx", feeds, "minmax")
    assert any(item.startswith("Conv ->") for item in kept)
    assert any(item.endswith("-> recon") for item in kept)
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    producer = {name: node for node in graph.node for name in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    quantized = [node for node in convs if producer.get(node.input[1]) is not None
                 and producer[node.input[1]].op_type == "DequantizeLinear"]
    floats = [node for node in convs if node not in quantized]
    assert quantized and len(floats) == 2  # the reconstruction and segmentation heads
    # the reconstruction head feeds the residual addition that makes the output
    recon = producer["recon"]
    residual = producer[recon.input[0]]
    assert {producer[name].name for name in residual.input if name in producer} & \
        {node.name for node in floats}
    expected = predict(module, fbp).images
    got = predict(OnnxModule(module, tmp_path / "int8.onnx", "onnx-int8"), fbp).images
    error = np.abs(got - expected).mean()
    assert 0 < error < 0.05 * np.abs(expected - fbp).mean(), error
    assert kept_in_float(path)


def write_validation(root, fbp):
    """A validation split at GEOMETRY: prepared references and the simulation."""
    (root / "prepared" / "val").mkdir(parents=True)
    save_array(root / "prepared" / "val", "hu", fbp * 0.9)
    index = [["subject", z] for z in range(len(fbp))]
    (root / "prepared" / "val" / "index.json").write_text(json.dumps(index))
    sim = root / "sim" / str(GEOMETRY.views)
    (sim / "val").mkdir(parents=True)
    save_array(sim / "val", "fbp", fbp)
    (sim / "val" / "slices.json").write_text(json.dumps(list(range(len(fbp)))))
    (sim / "geometry.json").write_text(json.dumps({"geometry": GEOMETRY.to_dict()}))


def test_an_export_holds_both_graphs_its_contract_and_its_figures(tmp_path, fbp):
    write_validation(tmp_path, fbp)
    checkpoint = save_module(tmp_path / "m.ckpt", "predicted", 3, True)
    module = load_module(checkpoint)
    cfg = load_params(ROOT / "params.yaml", ["deploy.int8.calibration_slices=3"])
    out = tmp_path / "export"
    record = export_model(cfg, module, tmp_path / "prepared", tmp_path / "sim", out,
                          str(checkpoint))
    assert json.loads((out / CONTRACT).read_text()) == json.loads(json.dumps(record))
    assert all((out / name).is_file() for name in FILES.values())
    assert record["inputs"]["fbp"]["shape"] == ["batch", 3, 32, 32]
    assert record["inputs"]["fbp"]["units"] == "HU" and record["hu_scale"] == 1000.0
    assert record["views"] == 16 and record["geometry"] == GEOMETRY.to_dict()
    assert set(record["outputs"]) == {"recon", "probs"}
    assert 0 < record["parity"]["max_abs_hu"] <= 0.5 and record["parity"]["slices"] == 5
    int8 = record["int8"]
    assert int8["calibration"] == {"split": "val", "slices": 3, "network_inputs": 6,
                                   "method": "percentile"}
    assert int8["worst_psnr_drop_db"] >= int8["psnr_drop_db"]
    assert int8["worst_slice"][0] == "subject"
    assert record["weights_sha256"] == weights_digest(module)

    # --runtime onnx reads it; a sinogram reconstructs as torch does, to the HU rounding
    measured = tmp_path / "scan.npy"
    np.save(measured, sinograms())
    measured.with_suffix(".json").write_text(json.dumps(GEOMETRY.to_dict()))
    volumes = {}
    for runtime in ("torch", "onnx", "onnx-int8"):
        output = tmp_path / f"{runtime}.nii.gz"
        extra = [] if runtime == "torch" else ["--export", str(out)]
        assert main(["reconstruct", str(measured), "-o", str(output), "--model",
                     str(checkpoint), "--runtime", runtime, *extra]) == 0
        volumes[runtime] = axial_slices(np.asarray(nib.load(output).dataobj, np.float32))
    assert np.abs(volumes["onnx"] - volumes["torch"]).max() <= 1.0
    assert not np.array_equal(volumes["onnx-int8"], volumes["torch"])


def test_a_graph_that_misses_parity_is_refused_and_nothing_is_written(tmp_path, fbp):
    write_validation(tmp_path, fbp)
    module = load_module(save_module(tmp_path / "m.ckpt", "predicted", 3, True))
    cfg = load_params(ROOT / "params.yaml", ["deploy.parity_hu=0.0"])
    with pytest.raises(InputError, match=r"differs from torch by .* \(limit deploy.parity_hu"):
        export_model(cfg, module, tmp_path / "prepared", tmp_path / "sim", tmp_path / "export",
                     "m.ckpt")
    assert not (tmp_path / "export").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]
    cfg = load_params(ROOT / "params.yaml", ["deploy.int8.calibration=kl"])
    with pytest.raises(InputError, match=r"'kl' \(deploy.int8.calibration\) is unknown"):
        export_model(cfg, module, tmp_path / "prepared", tmp_path / "sim", tmp_path / "export",
                     "m.ckpt")
    assert not (tmp_path / "export").exists()


def test_an_export_serves_only_the_weights_it_was_made_from(tmp_path, fbp):
    write_validation(tmp_path, fbp)
    cfg = load_params(ROOT / "params.yaml", ["deploy.int8.calibration_slices=2"])
    first = load_module(save_module(tmp_path / "a.ckpt", "predicted", 3, True))
    export_model(cfg, first, tmp_path / "prepared", tmp_path / "sim", tmp_path / "export", "a")
    assert isinstance(runtime_module(cfg, first, "onnx", "a", tmp_path / "export"), OnnxModule)
    other = load_module(save_module(tmp_path / "b.ckpt", "predicted", 3, True))
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    with pytest.raises(InputError, match="made from other weights"):
        runtime_module(cfg, other, "onnx", "b.ckpt", tmp_path / "export")
    with pytest.raises(InputError, match="--export is read by --runtime onnx"):
        runtime_module(cfg, first, "torch", "a", tmp_path / "export")
    with pytest.raises(InputError, match="sparsect export --model a.ckpt"):
        runtime_module(cfg, first, "onnx", "a.ckpt")


def test_reconstruct_with_an_onnx_runtime_and_no_export_says_what_to_run(tmp_path, capsys):
    checkpoint = save_module(tmp_path / "m.ckpt", "predicted", 3, True)
    measured = tmp_path / "scan.npy"
    np.save(measured, sinograms(2))
    measured.with_suffix(".json").write_text(json.dumps(GEOMETRY.to_dict()))
    assert main(["reconstruct", str(measured), "-o", str(tmp_path / "r.nii.gz"), "--model",
                 str(checkpoint), "--runtime", "onnx"]) == 2
    error = capsys.readouterr().err
    assert "sparsect export --model" in error and error.count("\n") == 1
    assert main(["reconstruct", str(measured), "-o", str(tmp_path / "r.nii.gz"), "--model",
                 str(checkpoint), "--runtime", "onnx", "--method", "fbp"]) == 2
    assert "--runtime onnx runs a model's network" in capsys.readouterr().err
    assert not (tmp_path / "r.nii.gz").exists()
