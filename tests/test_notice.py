"""The research-use notice reaches every output a user reads: the README's first
screen, ``--help``, each reconstructed NIfTI and ``report.md``."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import ROOT
from sparsect.cli import build_parser
from sparsect.data.outputs import save_nifti
from sparsect.evaluation.report import markdown
from sparsect.notice import RESEARCH_NOTICE, RESEARCH_NOTICE_SHORT

README_FIRST_SCREEN = 25  # lines


def normalised(text: str) -> str:
    """argparse rewraps help text; compare with every run of whitespace as one space."""
    return " ".join(text.split())


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    return actions[0].choices[name]


def test_notice_is_one_sentence_per_form():
    assert RESEARCH_NOTICE.strip() == RESEARCH_NOTICE and "\n" not in RESEARCH_NOTICE
    assert "clinical" in RESEARCH_NOTICE and "clinical" in RESEARCH_NOTICE_SHORT
    assert len(RESEARCH_NOTICE_SHORT.encode()) <= 79


def test_readme_first_screen_carries_the_notice():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    # a quoted notice may be wrapped, each line starting with "> "
    screen = normalised(
        " ".join(re.sub(r"^\s*>\s?", "", line) for line in lines[:README_FIRST_SCREEN])
    )
    found = normalised(RESEARCH_NOTICE) in screen
    assert found, (
        f"README.md must state the research-use notice within its first "
        f"{README_FIRST_SCREEN} lines: '> {RESEARCH_NOTICE}'"
    )


def test_top_level_help_carries_the_notice():
    assert normalised(RESEARCH_NOTICE) in normalised(build_parser().format_help())


def test_reconstruct_help_carries_the_notice():
    reconstruct = _subparser(build_parser(), "reconstruct")
    assert normalised(RESEARCH_NOTICE) in normalised(reconstruct.format_help())


def test_help_survives_a_narrow_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    parser = build_parser()
    for text in (parser.format_help(), _subparser(parser, "reconstruct").format_help()):
        assert normalised(RESEARCH_NOTICE) in normalised(text)


@pytest.mark.parametrize("name", ["recon.nii.gz", "recon.nii", "case_reference.nii.gz"])
def test_reconstructed_nifti_carries_the_short_notice(tmp_path, name):
    path = tmp_path / name
    volume = np.linspace(-1000, 1000, 4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    save_nifti(path, volume, np.diag([2.0, 2.0, 4.0, 1.0]))
    image = nib.load(path)
    raw = image.header["descrip"].item()
    assert isinstance(raw, bytes) and len(raw) <= 79
    descrip = raw.decode("ascii")
    assert RESEARCH_NOTICE_SHORT in descrip
    # the notice does not cost the data or the geometry
    assert np.array_equal(np.asarray(image.dataobj), np.round(volume).astype(np.int16))
    assert np.allclose(image.affine, np.diag([2.0, 2.0, 4.0, 1.0]))


def _method(psnr: float) -> dict:
    return {
        "psnr": psnr,
        "ssim": 0.9,
        "rmse_hu": 40.0,
        "residual": 0.01,
        "ci95": {"psnr": [psnr - 0.5, psnr + 0.5], "ssim": [0.89, 0.91], "rmse_hu": [38.0, 42.0]},
    }


def test_report_states_the_notice_near_the_top():
    merged = {
        "60": {
            "_settings": {
                "slices": 8,
                "subjects": ["s1", "s2"],
                "hu_window": [-1000, 2000],
                "data_range_hu": 3000,
            },
            "fbp": _method(28.0),
            "sg_unet": _method(36.0),
        }
    }
    text = markdown(merged)
    head = text.splitlines()[:5]
    assert f"> {RESEARCH_NOTICE}" in head
    assert "## 60 views" in text and "| sg_unet |" in text


def test_empty_report_still_states_the_notice():
    assert f"> {RESEARCH_NOTICE}" in markdown({}).splitlines()[:5]


def test_installed_script_prints_the_notice():
    sparsect = Path(sys.executable).parent / "sparsect"
    for args in (["--help"], ["reconstruct", "--help"]):
        done = subprocess.run(
            [str(sparsect), *args], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
        assert normalised(RESEARCH_NOTICE) in normalised(done.stdout)


def test_phantom_nifti_files_carry_the_short_notice(tmp_path):
    from sparsect.data.phantom import PhantomConfig, write_dataset

    config = PhantomConfig(shape=(160, 160, 2), spacing_mm=(3.0, 3.0, 5.0))
    write_dataset(tmp_path / "data", subjects=1, seed=0, config=config)
    files = sorted((tmp_path / "data").glob("*.nii.gz"))
    assert [f.name for f in files] == ["subject_000.nii.gz", "subject_000_seg.nii.gz"]
    for path in files:
        descrip = bytes(nib.load(path).header["descrip"]).rstrip(b"\0")
        assert len(descrip) <= 79 and RESEARCH_NOTICE_SHORT in descrip.decode(), (path, descrip)
