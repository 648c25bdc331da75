"""The installed console script: exit codes and stderr as a shell or DVC sees them.

The full catalogue of bad inputs runs in-process in ``test_bad_input.py``; these
cases check the same contract through a real process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

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
        (["simulate", "--prepared", "prepared", "--out", "out", *PARAMS, "noise.i0=0"],
         "Invalid noise setting"),
        (["train", "--views", "60", "--prepared", "p", "--masks", "m", *PARAMS],
         "train needs --sim and --out"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_code_2(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    done = run(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"sparsect {args[0]}: ")
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    done = run("prepare", "--data", "empty", "--out", "out", *PARAMS, "--debug", cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" in done.stderr
