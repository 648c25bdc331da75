"""User mistakes end in one sentence naming the input and the fix, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPARSECT = str(Path(sys.executable).parent / "sparsect")
PARAMS = ["--params", str(ROOT / "params.yaml")]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SPARSECT, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prepare", "--data", "data", "--out", "out", *PARAMS, "geometry.veiws=60"],
         "Unknown config key 'geometry.veiws'"),
        (["prepare", "--data", "empty", "--out", "out", *PARAMS], "holds no CT scan"),
        (["prepare", "--data", "data", "--out", "out", "--params", "missing.yaml"],
         "Parameter file 'missing.yaml' is missing"),
        (["simulate", "--prepared", "prepared", "--out", "out", *PARAMS, "geometry.views=0"],
         "Geometry.views must be a positive integer"),
        (["simulate", "--prepared", "prepared", "--out", "out", *PARAMS, "noise.i0=0"],
         "Invalid noise config"),
        (["simulate", "--prepared", "prepared", "--out", "out", *PARAMS, "geometry.views=5000"],
         "more than 4 x"),
        (["reconstruct", "nothing.nii.gz", "-o", "x.nii.gz", "--model", "m.ckpt", *PARAMS],
         "does not exist"),
        (["train", "--views", "60", *PARAMS], "train needs --sim and --out"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_code_2(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    done = run(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    done = run("prepare", "--data", "empty", "--out", "out", *PARAMS, "--debug", cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" in done.stderr
