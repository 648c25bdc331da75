"""The catalogue of bad inputs: every case goes through the command line.

Each case asserts the contract of :mod:`sparsect.errors`: exit code 2, one
sentence on stderr that names the input and says what to do, no traceback, and
no output (not even a hidden temporary folder) left behind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import ROOT, write_dicom_series, write_nifti, write_sitk
from sparsect.cli import main
from sparsect.models.module import ReconModule
from sparsect.physics import Geometry

PARAMS = ["--params", str(ROOT / "params.yaml")]
TINY_GRID = ["data.image_size=32", "data.pixel_size_mm=12.0"]
GEOMETRY = Geometry("parallel", views=16, image_size=32, pixel_size_mm=12.0)


def volume() -> np.ndarray:
    """(x, y, z) = (40, 32, 6) HU: air, a water block and a bone rod."""
    hu = np.full((40, 32, 6), -1000.0)
    hu[8:32, 6:26, :] = 40.0
    hu[18:22, 14:18, :] = 1000.0
    return hu


def good_data(root: Path, subjects: int = 3) -> Path:
    """``root/data`` with ``subjects`` valid scans, beside which a bad one is put."""
    data = root / "data"
    data.mkdir()
    for i in range(subjects):
        write_nifti(data / f"good{i}.nii.gz", volume())
    return data


def prepare(root: Path, *overrides: str) -> list[str]:
    return ["prepare", "--data", str(root / "data"), "--out", str(root / "out"), *PARAMS,
            *TINY_GRID, *overrides]


def simulate(root: Path, *overrides: str) -> list[str]:
    return ["simulate", "--prepared", str(root / "data"), "--out", str(root / "out"), *PARAMS,
            *TINY_GRID, *overrides]


def checkpoint(path: Path, **hparams) -> Path:
    module = ReconModule(net={"_target_": "sparsect.models.unet.SGUNet", "channels": 4,
                              "depth": 3, "seg_channels": 4}, prior="predicted",
                         geometry=GEOMETRY.to_dict(), noise={"i0": 1e5, "electronic_std": 0.0},
                         acquisition={"upsample": 2, "filter": "ram-lak",
                                      "hu_clip": [-1024.0, 3071.0]},
                         **hparams)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)},
               path)
    return path


def reconstruct(root: Path, item: Path, *extra: str) -> list[str]:
    return ["reconstruct", str(item), "-o", str(root / "out" / "recon.nii.gz"), *PARAMS, *extra]


# --- setups: each writes its bad input under root and returns the command line ---------

def truncated_nifti(root):
    path = write_nifti(good_data(root) / "bad.nii.gz", volume())
    path.write_bytes(path.read_bytes()[:300])
    return prepare(root)


def corrupt_nifti(root):
    (good_data(root) / "bad.nii.gz").write_bytes(b"this is not a NIfTI file" * 20)
    return prepare(root)


def empty_data(root):
    (root / "data").mkdir()
    return prepare(root)


def missing_data(root):
    return prepare(root)


def invalid_phantom_setting(root):
    return ["make-data", "--out", str(root / "out"), *PARAMS,
            "data.phantom.table_probability=1.5"]


def two_d_volume(root):
    data = good_data(root)
    nib.save(nib.Nifti1Image(np.zeros((40, 32), np.int16), np.eye(4)), data / "bad.nii.gz")
    return prepare(root)


def four_d_volume(root):
    data = good_data(root)
    nib.save(nib.Nifti1Image(np.zeros((40, 32, 6, 3), np.int16), np.eye(4)), data / "bad.nii.gz")
    return prepare(root)


def nan_voxels(root):
    hu = volume()
    hu[3, 4, 2] = np.nan
    write_nifti(good_data(root) / "bad.nii.gz", hu, dtype=np.float32)
    return prepare(root)


def infinite_voxels(root):
    hu = volume()
    hu[3, 4, 2] = np.inf
    write_nifti(good_data(root) / "bad.nii.gz", hu, dtype=np.float32)
    return prepare(root)


def mr_series(root):
    write_dicom_series(good_data(root) / "bad", volume(), modality="MR")
    return prepare(root)


def series_without_rescale(root):
    write_dicom_series(good_data(root) / "bad", volume(), rescale=False)
    return prepare(root)


def series_missing_a_slice(root):
    series = write_dicom_series(good_data(root) / "bad", volume())
    (series / "slice_003.dcm").unlink()
    return prepare(root)


def series_with_a_duplicated_slice(root):
    series = write_dicom_series(good_data(root) / "bad", volume())
    (series / "slice_002_copy.dcm").write_bytes((series / "slice_002.dcm").read_bytes())
    return prepare(root)


def corrupt_dicom_file(root):
    series = write_dicom_series(good_data(root) / "bad", volume())
    (series / "slice_004.dcm").write_bytes(b"\0" * 64)
    return prepare(root)


def two_dicom_series(root: Path) -> Path:
    """``root/patient``: series 2 and 3 in one folder, files named as archives do."""
    for number in (2, 3):
        write_dicom_series(root / "patient", volume(), suffix="", prefix=f"CT.{number}.",
                           series_number=number, description="Body")
    return root / "patient"


def several_series_without_choice(root):
    return reconstruct(root, two_dicom_series(root), "--model", str(checkpoint(root / "m.ckpt")))


def series_not_in_the_folder(root):
    return reconstruct(root, two_dicom_series(root), "--model", str(checkpoint(root / "m.ckpt")),
                       "--series", "9")


def series_option_for_a_nifti(root):
    write_nifti(root / "scan.nii.gz", volume())
    return reconstruct(root, root / "scan.nii.gz", "--model", str(checkpoint(root / "m.ckpt")),
                       "--series", "3")


def only_a_localizer(root):
    write_dicom_series(root / "scout", volume()[:, :, :1], suffix="",
                       image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    return reconstruct(root, root / "scout", "--model", str(checkpoint(root / "m.ckpt")))


def undecodable_transfer_syntax(root):
    write_dicom_series(good_data(root) / "bad", volume(), suffix="",
                       transfer_syntax="1.2.840.10008.1.2.4.110")  # JPEG XL Lossless
    return prepare(root)


def truncated_dicom_without_suffix(root):
    series = write_dicom_series(good_data(root) / "bad", volume(), suffix="", prefix="CT.1.3.")
    (series / "CT.1.3.004").write_bytes((series / "CT.1.3.004").read_bytes()[:400])
    return prepare(root)


def tilted_series(root):
    tilt = np.radians(15)
    write_dicom_series(good_data(root) / "bad", volume(), step=(0, 0, 4.0),
                       orientation=(1, 0, 0, 0, np.cos(tilt), -np.sin(tilt)))
    return prepare(root)


def sagittal_series(root):
    write_dicom_series(good_data(root) / "bad", volume(), orientation=(0, 1, 0, 0, 0, -1))
    return prepare(root)


def unknown_totalsegmentator_structure(root):
    subject = good_data(root) / "s0001"
    (subject / "segmentations").mkdir(parents=True)
    write_nifti(subject / "ct.nii.gz", volume())
    write_nifti(subject / "segmentations" / "liver.nii.gz", np.zeros((40, 32, 6)),
                dtype=np.uint8)
    write_nifti(subject / "segmentations" / "livr.nii.gz", np.zeros((40, 32, 6)),
                dtype=np.uint8)
    return prepare(root)


def lodopab_file_without_data(root):
    import h5py

    with h5py.File(good_data(root) / "ground_truth_train_000.hdf5", "w") as file:
        file["images"] = np.zeros((4, 36, 36), np.float32)
    return prepare(root)


def label_map_of_another_shape(root):
    data = good_data(root)
    write_nifti(data / "good0_seg.nii.gz", np.zeros((20, 20, 6)), dtype=np.uint8)
    return prepare(root)


def two_scans_one_subject(root):
    write_sitk(good_data(root) / "good1.nrrd", volume())
    return prepare(root)


def too_few_subjects(root):
    good_data(root, subjects=2)
    return prepare(root)


def override(text: str) -> Callable:
    """``prepare`` on good data with one bad override."""
    def setup(root):
        good_data(root)
        return prepare(root, text)
    return setup


def unknown_config_group(root):
    return ["params", "--conf", str(ROOT / "conf"), "--out", str(root / "out"),
            "noise=ultra_low_dose"]


def missing_params_file(root):
    good_data(root)
    return ["prepare", "--data", str(root / "data"), "--out", str(root / "out"),
            "--params", str(root / "params.yaml")]


def zero_views(root):
    return simulate(root, "geometry.views=0")


def negative_views(root):
    return simulate(root, "geometry.views=-30")


def too_many_views(root):
    return simulate(root, "geometry.views=5000")


def rebinned_input_in_parallel_beam(root):
    return simulate(root, "physics.input_parallel_views=240")


def zero_i0(root):
    return simulate(root, "noise.i0=0")


def negative_i0(root):
    return simulate(root, "noise.i0=-1e5")


def missing_prepared(root):
    return simulate(root)


def bad_shard(root):
    return simulate(root, "--shard", "3/2")


def unwritable_output(root):
    good_data(root)
    (root / "blocker").write_text("a file where the output folder should go")
    return ["prepare", "--data", str(root / "data"), "--out", str(root / "blocker" / "out"),
            *PARAMS, *TINY_GRID]


def sinogram_of_wrong_shape(root):
    np.save(root / "scan.npy", np.zeros((2, GEOMETRY.views, GEOMETRY.detector_count + 7)))
    (root / "scan.json").write_text(json.dumps(GEOMETRY.to_dict()))
    return reconstruct(root, root / "scan.npy", "--model", str(checkpoint(root / "m.ckpt")))


def sinogram_of_another_geometry(root):
    other = Geometry("parallel", views=30, image_size=32, pixel_size_mm=12.0)
    np.save(root / "scan.npy", np.zeros((2, other.views, other.detector_count)))
    (root / "scan.json").write_text(json.dumps(other.to_dict()))
    return reconstruct(root, root / "scan.npy", "--model", str(checkpoint(root / "m.ckpt")))


def counts_with_zeros(root):
    counts = np.full((2, GEOMETRY.views, GEOMETRY.detector_count), 5e4)
    counts[1, 3, 4] = 0.0
    np.save(root / "scan.npy", counts)
    (root / "scan.json").write_text(json.dumps(
        {"geometry": GEOMETRY.to_dict(), "values": "counts", "flat_field": 1e5}))
    return reconstruct(root, root / "scan.npy", "--model", str(checkpoint(root / "m.ckpt")))


def fan_sidecar(root, **changes) -> list[str]:
    """A fan-beam sinogram whose geometry file has ``changes`` (None deletes a field)."""
    fan = Geometry("fan", views=16, image_size=32, pixel_size_mm=12.0)
    fields = {**fan.to_dict(), "axis_offset_mm": 3.0}
    for name, value in changes.items():
        if value is None:
            fields.pop(name)
        else:
            fields[name] = value
    np.save(root / "scan.npy", np.zeros((2, fan.views, fan.detector_count)))
    (root / "scan.json").write_text(json.dumps(fields))
    return reconstruct(root, root / "scan.npy", "--model", str(checkpoint(root / "m.ckpt")),
                       *(("--method", "fbp", "--option", "filter=hann") if changes else ()))


def line_integrals_with_a_flat_field(root):
    np.save(root / "scan.npy", np.zeros((2, GEOMETRY.views, GEOMETRY.detector_count)))
    (root / "scan.json").write_text(json.dumps({"geometry": GEOMETRY.to_dict(),
                                                "flat_field": 1e5}))
    return reconstruct(root, root / "scan.npy", "--method", "fbp", "--option", "filter=hann",
                       "--model", str(checkpoint(root / "m.ckpt")))


def counts_without_flat_field(root):
    np.save(root / "scan.npy", np.full((2, GEOMETRY.views, GEOMETRY.detector_count), 5e4))
    (root / "scan.json").write_text(json.dumps({"geometry": GEOMETRY.to_dict(),
                                                "values": "counts"}))
    return reconstruct(root, root / "scan.npy", "--model", str(checkpoint(root / "m.ckpt")))


def missing_checkpoint(root):
    write_nifti(root / "scan.nii.gz", volume())
    return reconstruct(root, root / "scan.nii.gz", "--model", str(root / "missing.ckpt"))


def foreign_checkpoint(root):
    write_nifti(root / "scan.nii.gz", volume())
    torch.save({"weights": torch.zeros(3)}, root / "foreign.ckpt")
    return reconstruct(root, root / "scan.nii.gz", "--model", str(root / "foreign.ckpt"))


def missing_registry_model(root, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'registry.db'}")
    write_nifti(root / "scan.nii.gz", volume())
    return reconstruct(root, root / "scan.nii.gz", "--model",
                       "models:/sparsect-parallel-16v-sg_unet@champion")


def unreachable_tracking_server(root, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: closed
    write_nifti(root / "scan.nii.gz", volume())
    return reconstruct(root, root / "scan.nii.gz")


def training_without_tracking_server(root, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    return ["train", "--views", "16", "--prepared", str(root / "prepared"), "--sim",
            str(root / "sim"), "--masks", str(root / "masks"), "--out", str(root / "out"),
            *PARAMS]


def missing_reconstruct_input(root):
    return reconstruct(root, root / "nothing.nii.gz", "--model", str(checkpoint(root / "m.ckpt")))


def views_not_of_the_model(root):
    write_nifti(root / "scan.nii.gz", volume())
    return reconstruct(root, root / "scan.nii.gz", "--model", str(checkpoint(root / "m.ckpt")),
                       "--views", "60")


def classical_without_settings(root):
    write_nifti(root / "scan.nii.gz", volume())
    return reconstruct(root, root / "scan.nii.gz", "--model", str(checkpoint(root / "m.ckpt")),
                       "--method", "tv")


def option_not_key_value(root):
    write_nifti(root / "scan.nii.gz", volume())
    return reconstruct(root, root / "scan.nii.gz", "--model", str(checkpoint(root / "m.ckpt")),
                       "--method", "tv", "--option", "weight")


def option_unknown_to_the_method(root):
    write_nifti(root / "scan.nii.gz", volume())
    return reconstruct(root, root / "scan.nii.gz", "--model", str(checkpoint(root / "m.ckpt")),
                       "--method", "sirt", "--option", "weight=0.1")


def output_not_nifti(root):
    write_nifti(root / "scan.nii.gz", volume())
    return ["reconstruct", str(root / "scan.nii.gz"), "-o", str(root / "out" / "recon.png"),
            "--model", str(checkpoint(root / "m.ckpt")), *PARAMS]


@dataclass(frozen=True)
class Case:
    setup: Callable
    names: str  # a regex for the input, as named in the message
    fix: str  # a regex for what to do


CASES = {
    "truncated NIfTI": Case(truncated_nifti, r"bad\.nii\.gz", "check that the file is complete"),
    "corrupt NIfTI": Case(corrupt_nifti, r"bad\.nii\.gz", "supported format"),
    "empty data folder": Case(empty_data, r"data'", "sparsect make-data"),
    "missing data folder": Case(missing_data, r"data'", "create it"),
    "2D volume": Case(two_d_volume, r"bad\.nii\.gz' is a 2D image", "third axis"),
    "4D volume": Case(four_d_volume, r"bad\.nii\.gz' has shape \(3, ", "one volume per scan"),
    "NaN voxels": Case(nan_voxels, r"bad\.nii\.gz' contains NaN", "fix or remove"),
    "infinite voxels": Case(infinite_voxels, r"bad\.nii\.gz' contains NaN or infinite",
                            "fix or remove"),
    "DICOM of modality MR": Case(mr_series, r"bad' has modality MR", "give it a CT series"),
    "DICOM without rescale tags": Case(series_without_rescale, r"bad' has no RescaleSlope",
                                       "add the tags"),
    "DICOM missing a slice": Case(series_missing_a_slice, r"bad' is missing slices",
                                  "export the complete"),
    "DICOM duplicated slice": Case(series_with_a_duplicated_slice,
                                   r"bad' has duplicated slices \('slice_002", "remove the dup"),
    "corrupt DICOM file": Case(corrupt_dicom_file, r"slice_004\.dcm'", "replace it"),
    "several DICOM series": Case(several_series_without_choice,
                                 r"patient' holds 2 series \(#2 'Body' \(6 slices, UID [0-9.]+\); "
                                 r"#3 'Body'", "choose one with --series UID-or-number"),
    "DICOM series not in the folder": Case(series_not_in_the_folder,
                                           r"patient' holds no series '9' \(it holds #2",
                                           "give one of these UIDs or numbers to --series"),
    "--series for a NIfTI": Case(series_option_for_a_nifti,
                                 r"--series 3 picks a DICOM series, but '.*scan\.nii\.gz'",
                                 "drop --series"),
    "only a localizer": Case(only_a_localizer, r"scout' holds no CT image",
                             "give a folder with an axial CT series"),
    "undecodable transfer syntax": Case(undecodable_transfer_syntax,
                                        r"bad' is stored as JPEG XL Lossless "
                                        r"\(1\.2\.840\.10008\.1\.2\.4\.110\)",
                                        "convert the series to an uncompressed"),
    "truncated DICOM without suffix": Case(truncated_dicom_without_suffix, r"CT\.1\.3\.004'",
                                           "replace it"),
    "gantry tilt": Case(tilted_series, r"bad' was acquired with a gantry tilt of 15\.0 degrees",
                        "resample it onto an untilted axial grid"),
    "sagittal DICOM series": Case(sagittal_series, r"bad' holds sagittal slices",
                                  "reformat the series to axial"),
    "unknown TotalSegmentator structure": Case(unknown_totalsegmentator_structure,
                                               r"livr\.nii\.gz' names structure 'livr'",
                                               "rename it to the class name"),
    "LoDoPaB file without data": Case(lodopab_file_without_data,
                                      r"ground_truth_train_000\.hdf5' has no 3D dataset 'data'",
                                      "as downloaded"),
    "label map of another shape": Case(label_map_of_another_shape, r"good0_seg\.nii\.gz' has "
                                       r"shape \(20, 20, 6\)", "on the scan's grid"),
    "two scans of one subject": Case(two_scans_one_subject, r"good1\.nii\.gz' and '.*good1\.nrrd",
                                     "keep one"),
    "too few subjects": Case(too_few_subjects, r"Only 2 scan", "add scans"),
    "bad split fractions": Case(override("data.split.val=0.5"), r"Split fractions",
                                "fix data.split"),
    "mistyped override": Case(override("geometry.veiws=60"), r"'geometry\.veiws'",
                              r"did you mean geometry\.views"),
    "override without key": Case(override("=60"), r"'=60'", "key=value"),
    "text for a number": Case(override("data.image_size=large"), r"'data\.image_size=large'",
                              r"data\.image_size=\d+"),
    "group override on params.yaml": Case(override("geometry=fan_clinical"),
                                          r"'geometry=fan_clinical'",
                                          "sparsect params geometry=fan_clinical"),
    "unknown config group option": Case(unknown_config_group, r"ultra_low_dose",
                                        "check the key and value"),
    "missing params file": Case(missing_params_file, r"params\.yaml' is missing",
                                "sparsect params"),
    "zero views": Case(zero_views, r"views must be a positive integer, got 0",
                       r"set geometry\.\*"),
    "negative views": Case(negative_views, r"got -30", r"set geometry\.\*"),
    "views beyond the detector": Case(too_many_views, r"views=5000 is more than 4 x",
                                      r"set geometry\.\*"),
    "rebinned input in parallel beam": Case(rebinned_input_in_parallel_beam,
                                            r"physics\.input_parallel_views \(240\) rebins "
                                            r"fan-beam data", r"set it to null"),
    "zero I0": Case(zero_i0, r"i0 must be a positive number of photons.*got 0",
                    r"set noise\.i0"),
    "negative I0": Case(negative_i0, r"got -100000", r"set noise\.i0"),
    "missing prepared input": Case(missing_prepared, r"index\.json' is missing",
                                   "run the stage"),
    "bad shard spec": Case(bad_shard, r"Shard '3/2'", "e.g. 2/8"),
    "invalid phantom setting": Case(invalid_phantom_setting,
                                    r"table_probability must lie in \[0, 1\], got 1\.5",
                                    r"fix it in conf/data/"),
    "unwritable output": Case(unwritable_output, r"blocker/out'", "choose a writable"),
    "sinogram of wrong shape": Case(sinogram_of_wrong_shape,
                                    r"scan\.npy' has 55 bins .* gives detector_count 48",
                                    "fix the one that is wrong"),
    "sinogram of another geometry": Case(sinogram_of_another_geometry,
                                         r"scan\.npy' cannot be given to model .* views \(30\)",
                                         "reconstruct it with --method fbp"),
    "fan offset for a model": Case(lambda root: fan_sidecar(root),
                                   r"scan\.npy' cannot be given to model .* beam",
                                   "--method fbp, sirt, cgls or tv"),
    "sidecar missing a field": Case(lambda root: fan_sidecar(root, source_detector_mm=None),
                                    r"scan\.json' gives no 'source_detector_mm'", "add it"),
    "sidecar with an unknown field": Case(lambda root: fan_sidecar(root, axis_ofset_mm=1.0),
                                          r"unknown geometry field\(s\) \['axis_ofset_mm'\]",
                                          "valid ones are"),
    "sidecar curved parallel": Case(lambda root: fan_sidecar(root, beam="parallel",
                                                             detector_shape="curved"),
                                    r"invalid 'detector_shape'", "fix it"),
    "sidecar contradicting views": Case(lambda root: fan_sidecar(root, views=20),
                                        r"has 16 views .* gives views 20",
                                        "fix the one that is wrong"),
    "sidecar flat field for line integrals": Case(line_integrals_with_a_flat_field,
                                                  r"'flat_field' of .*scan\.json' contradicts",
                                                  "drop it"),
    "counts with zeros": Case(counts_with_zeros, r"scan\.npy' has 1 zero or negative counts",
                              "replace photon-starved bins"),
    "counts without flat field": Case(counts_without_flat_field, r"holds raw counts but",
                                      "add I0"),
    "missing checkpoint": Case(missing_checkpoint, r"missing\.ckpt' does not exist",
                               "train a model or fix the path"),
    "foreign checkpoint": Case(foreign_checkpoint, r"foreign\.ckpt' is not a sparsect",
                               "written by `sparsect train`"),
    "missing registry model": Case(missing_registry_model,
                                   r"'models:/sparsect-parallel-16v-sg_unet@champion'",
                                   "sparsect promote"),
    "unreachable tracking server": Case(unreachable_tracking_server,
                                        r"'http://127\.0\.0\.1:9' is unreachable",
                                        "unset MLFLOW_TRACKING_URI"),
    "training without its tracking server": Case(training_without_tracking_server,
                                                 r"'http://127\.0\.0\.1:9' is unreachable",
                                                 "start it"),
    "missing reconstruct input": Case(missing_reconstruct_input, r"nothing\.nii\.gz' does not",
                                      "give a CT volume"),
    "views not of the model": Case(views_not_of_the_model, r"--views 60",
                                   "pick the model of that view count"),
    "classical method without settings": Case(classical_without_settings,
                                              r"--method tv needs its settings",
                                              r"give them with --option \(e\.g\. weight="),
    "option not KEY=VALUE": Case(option_not_key_value, r"--option 'weight' is not KEY=VALUE",
                                 "--option iterations=100"),
    "option unknown to the method": Case(option_unknown_to_the_method,
                                         r"Unknown option\(s\) \['weight'\] for method 'sirt'",
                                         "fix the settings of 'sirt'"),
    "output not NIfTI": Case(output_not_nifti, r"recon\.png' must end in \.nii",
                             "e.g. recon.nii.gz"),
}


def _setup(case: Case, root: Path, monkeypatch) -> list[str]:
    if "monkeypatch" in case.setup.__code__.co_varnames:
        return case.setup(root, monkeypatch)
    return case.setup(root)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_ends_in_one_sentence_exit_2_and_no_output(name, tmp_path, monkeypatch,
                                                               capsys):
    case = CASES[name]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    argv = _setup(case, tmp_path, monkeypatch)
    before = {p for p in tmp_path.rglob("*")}

    code = main(argv)

    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    messages = [line for line in err.splitlines() if line.startswith("sparsect ")]
    assert len(messages) == 1, err
    message = messages[0]
    assert message.startswith(f"sparsect {argv[0]}: ")
    assert message.endswith((".", "?")), message
    assert not re.search(r"[.?!] +[A-Z]", message), f"more than one sentence: {message}"
    assert re.search(case.names, message), message
    assert re.search(case.fix, message), message
    # nothing half-written: the output is absent and no temporary file or folder remains
    assert not (tmp_path / "out").exists()
    assert {p for p in tmp_path.rglob("*")} - before <= {tmp_path / "registry.db"}, \
        sorted(map(str, {p for p in tmp_path.rglob("*")} - before))


def test_debug_and_hydra_full_error_show_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match="holds no CT scan"):
        main([*empty_data(tmp_path), "--debug"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(Exception, match="holds no CT scan"):
        main(prepare(tmp_path))
