"""Shared fixtures: small scans in every supported format and a tiny project."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# Re-exported for test modules that still import helpers from conftest.
from helpers import (  # noqa: F401
    BIN,
    ROOT,
    TINY_EXPERIMENT,
    TINY_TRAINING,
    build_tiny_inputs,
    init_tiny_repo,
    sh,
    tool_env,
    write_dicom_series,
    write_nifti,
    write_sitk,
)


@pytest.fixture
def block_volume() -> np.ndarray:
    """(x, y, z) = (40, 32, 6) HU volume: air with a water block and a bone rod."""
    volume = np.full((40, 32, 6), -1000.0)
    volume[8:32, 6:26, :] = 40.0
    volume[18:22, 14:18, :] = 1000.0
    return volume


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> Path:
    """The tiny project after one uninterrupted `dvc repro` of the whole pipeline."""
    repo = init_tiny_repo(tmp_path_factory.mktemp("repo"))
    sh("dvc", "repro", cwd=repo, env=tool_env(repo))
    return repo
