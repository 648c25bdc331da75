"""Measured sinograms end to end: a fan-beam scan with an axis offset and a curved detector,
written with the project's physics, through ``sparsect reconstruct`` with every classical
method on its own geometry, its offset given or estimated, and onto a model's detector."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sparsect.cli import main
from sparsect.data.io import axial_slices
from sparsect.methods.names import CLASSICAL
from sparsect.physics import MU_WATER_PER_MM, Geometry, mu_to_hu
from sparsect.physics.analytic import body_phantom, ellipse_image, ellipse_sinogram
from sparsect.physics.noise import NoiseModel
from test_bad_input import GEOMETRY, PARAMS, checkpoint

OPTIONS = {"fbp": ["filter=hann"], "sirt": ["iterations=60"], "cgls": ["iterations=12"],
           "sart": ["iterations=4"], "tv": ["weight=0.001", "iterations=60"]}
MEASURED = Geometry("fan", views=180, image_size=48, pixel_size_mm=6.0, detector_count=72,
                    detector_spacing_mm=10.0, detector_shape="curved", axis_offset_mm=9.1,
                    detector_shift_mm=-4.0)


def write_scan(root: Path, geometry: Geometry, sidecar: dict, counts: bool = False) -> Path:
    """``root/scan.npy`` (2 slices) of the body phantom on ``geometry`` with its sidecar."""
    line = ellipse_sinogram(body_phantom(geometry.image_size * geometry.pixel_size_mm),
                            geometry)
    if counts:
        i0 = 2e5
        noisy = NoiseModel(i0=i0).apply(np.stack([line, line]).astype(np.float32),
                                        np.random.default_rng(3))
        data = np.round(i0 * np.exp(-noisy))
        sidecar = {"geometry": sidecar, "values": "counts", "flat_field": i0}
    else:
        data = np.stack([line, line]).astype(np.float32)
    np.save(root / "scan.npy", data)
    (root / "scan.json").write_text(json.dumps(sidecar))
    return root / "scan.npy"


def run(root: Path, item: Path, *extra: str) -> int:
    return main(["reconstruct", str(item), "-o", str(root / "recon.nii.gz"), *PARAMS,
                 "--model", str(checkpoint(root / "m.ckpt")), *extra])


def body_rmse(path: Path, geometry: Geometry) -> float:
    image = axial_slices(np.asarray(nib.load(path).dataobj, np.float32))[0]
    truth = ellipse_image(body_phantom(geometry.image_size * geometry.pixel_size_mm), geometry)
    body = truth > 0.5 * MU_WATER_PER_MM
    return float(np.sqrt(np.mean((image - mu_to_hu(truth))[body] ** 2)))


@pytest.mark.parametrize("method", CLASSICAL)
def test_every_classical_method_reconstructs_a_measured_scan_on_its_own_geometry(
        method, tmp_path, monkeypatch):
    """SART updates view by view, which a curved detector's one-ray ASTRA views do not
    allow: it runs on the same scanner with a flat detector."""
    monkeypatch.chdir(tmp_path)
    measured = (dataclasses.replace(MEASURED, detector_shape="flat") if method == "sart"
                else MEASURED)
    item = write_scan(tmp_path, measured, measured.to_dict(), counts=True)
    options = [arg for value in OPTIONS[method] for arg in ("--option", value)]
    assert run(tmp_path, item, "--method", method, *options) == 0
    own = body_rmse(tmp_path / "recon.nii.gz", measured)
    record = json.loads((tmp_path / "recon.geometry.json").read_text())
    assert record["geometry"] == measured.to_dict() and record["values"] == "counts"
    assert record["axis_offset"] == {"estimated": False, "axis_offset_mm": 9.1}
    # the same data read as if the scanner were aligned: the offset matters
    ignored = dataclasses.replace(measured, axis_offset_mm=0.0, detector_shift_mm=0.0)
    (tmp_path / "scan.json").write_text(json.dumps(
        {**json.loads((tmp_path / "scan.json").read_text()), "geometry": ignored.to_dict()}))
    assert run(tmp_path, item, "--method", method, *options) == 0
    assert own < 0.6 * body_rmse(tmp_path / "recon.nii.gz", measured), method


def test_the_axis_offset_is_estimated_and_recorded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    item = write_scan(tmp_path, MEASURED, {**MEASURED.to_dict(), "axis_offset_mm": "estimate"})
    assert run(tmp_path, item, "--method", "fbp", "--option", "filter=hann") == 0
    record = json.loads((tmp_path / "recon.geometry.json").read_text())["axis_offset"]
    assert record["estimated"] and record["method"] == "opposite projections"
    bin_at_axis = MEASURED.detector_spacing_mm / MEASURED.magnification
    assert abs(record["axis_offset_mm"] - 9.1) <= 0.25 * bin_at_axis


def test_a_model_reads_a_scan_rebinned_onto_its_detector(tmp_path, monkeypatch):
    """A parallel scan with an offset and another detector is rebinned onto the model's."""
    monkeypatch.chdir(tmp_path)
    measured = dataclasses.replace(GEOMETRY, detector_count=60,
                                   detector_spacing_mm=GEOMETRY.detector_spacing_mm * 0.8,
                                   axis_offset_mm=7.3)
    item = write_scan(tmp_path, measured, measured.to_dict())
    assert run(tmp_path, item) == 0
    record = json.loads((tmp_path / "recon.geometry.json").read_text())
    assert record["rebinned_to"] == GEOMETRY.to_dict()
    assert nib.load(tmp_path / "recon.nii.gz").shape[:2] == (32, 32)


def test_dc_on_measured_counts_stops_at_their_poisson_floor(tmp_path, monkeypatch):
    """With counts, +dc's floor comes from the counts (recorded per slice): its noise part
    scales as 1 / sqrt(I0), its mismatch part (the grid's) does not change."""
    monkeypatch.chdir(tmp_path)
    floors = {}
    for i0 in (2e4, 2e6):
        folder = tmp_path / f"i0_{i0:g}"
        folder.mkdir()
        line = ellipse_sinogram(body_phantom(GEOMETRY.image_size * GEOMETRY.pixel_size_mm),
                                GEOMETRY)
        noisy = NoiseModel(i0=i0).apply(np.stack([line, line]).astype(np.float32),
                                        np.random.default_rng(5))
        np.save(folder / "scan.npy", np.round(i0 * np.exp(-noisy)))
        (folder / "scan.json").write_text(json.dumps(
            {"geometry": GEOMETRY.to_dict(), "values": "counts", "flat_field": i0}))
        model = checkpoint(folder / "m.ckpt", dc={"lambda": 0.1, "steps": 3})
        assert main(["reconstruct", str(folder / "scan.npy"), "-o",
                     str(folder / "recon.nii.gz"), *PARAMS, "--model", str(model),
                     "--dc"]) == 0
        record = json.loads((folder / "recon.geometry.json").read_text())
        assert record["dc_floor"]["source"] == "counts"
        floors[i0] = {part: np.array(record["dc_floor"][part])
                      for part in ("floor", "noise", "mismatch")}
        assert floors[i0]["floor"].shape == (2,) and np.isfinite(floors[i0]["floor"]).all()
    np.testing.assert_allclose(floors[2e4]["noise"] / floors[2e6]["noise"], 10.0, rtol=0.1)
    np.testing.assert_allclose(floors[2e4]["mismatch"], floors[2e6]["mismatch"], rtol=0.1)
