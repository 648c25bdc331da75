"""ASTRA's CUDA path, run wherever ASTRA finds a GPU (skipped elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsect.physics import Geometry, NoiseModel, Projector, Simulator
from sparsect.physics.projector import cuda_available

pytestmark = pytest.mark.skipif(not cuda_available(), reason="ASTRA finds no CUDA GPU here")


def disc(size: int = 128, radius: float = 0.35) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    return np.where(xx**2 + yy**2 < radius**2, 0.0193, 0.0).astype(np.float32)


@pytest.mark.parametrize("beam", ["parallel", "fan"])
def test_cuda_projection_and_fbp_match_the_cpu(beam):
    geometry = Geometry(beam, views=180, image_size=128, pixel_size_mm=2.0)
    image = disc()
    with Projector(geometry, "cpu") as cpu, Projector(geometry, "cuda") as gpu:
        assert gpu.device == "cuda"
        sino_cpu, sino_gpu = cpu.forward(image), gpu.forward(image)
        assert np.linalg.norm(sino_gpu - sino_cpu) / np.linalg.norm(sino_cpu) < 0.02
        inside = image > 0
        fbp_gpu = gpu.fbp(sino_gpu)
        assert abs(fbp_gpu[inside].mean() / 0.0193 - 1) < 0.02


def test_auto_device_picks_cuda_and_simulates():
    geometry = Geometry("parallel", views=60, image_size=64, pixel_size_mm=3.0)
    with Simulator(geometry, NoiseModel(i0=1e5), device="auto") as simulate:
        sinogram, fbp_hu = simulate(np.zeros((64, 64), np.float32), seed=0)
    assert sinogram.shape == (60, geometry.detector_count) and np.isfinite(fbp_hu).all()
    with Projector(geometry, "auto") as projector:
        assert projector.device == "cuda"
