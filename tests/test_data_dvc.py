"""The built-in data set regenerates to exactly the hash that data.dvc records."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from helpers import BIN, ROOT


@pytest.mark.slow
def test_regenerated_builtin_data_matches_data_dvc(tmp_path):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}

    def sh(*args: str) -> None:
        result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=600, check=False)
        assert result.returncode == 0, result.stderr

    sh("sparsect", "make-data", "--params", str(ROOT / "params.yaml"), "--out", "data")
    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    sh("dvc", "add", "-q", "data")
    regenerated = yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]
    committed = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]
    assert (regenerated["md5"], regenerated["nfiles"], regenerated["size"]) == (
        committed["md5"], committed["nfiles"], committed["size"]
    ), "the phantom generator changed: regenerate data/ and run `dvc add data`"
