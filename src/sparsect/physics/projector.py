"""The CT system operator ``A`` of one :class:`Geometry`, on ASTRA's CPU or CUDA code.

Scaling: the ASTRA volume geometry is given in mm (its extents are the physical
field of view) and the detector spacing in mm, so ASTRA's forward projection
already returns line integrals ``sum(mu * length in mm)`` and its FBP returns
``mu`` in 1/mm; no extra factor is needed (checked in ``tests/physics``).

ASTRA objects (projectors, data, algorithms) live in a global registry of the
ASTRA library and are not garbage collected: every one created here is deleted
in a ``finally`` block or in :meth:`Projector.close`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import astra
import numpy as np

from .fanbeam import fan_fbp
from .filters import check_filter
from .geometry import Geometry

DEVICES = ("auto", "cpu", "cuda")

# CPU projection models: 'linear' is Joseph's interpolating kernel (as in the
# dival/LoDoPaB benchmarks). Fan beam has no CPU Joseph kernel: 'line_fanflat'
# (exact ray-pixel intersection lengths) is ~3x faster than the area-weighted
# 'strip_fanflat' and, from an upsampled grid, just as accurate for simulation.
_CPU_KERNEL = {"parallel": "linear", "fan": "line_fanflat"}


def cuda_available() -> bool:
    """Whether ASTRA can run its CUDA algorithms here (False if it errors out)."""
    try:
        return bool(astra.use_cuda())
    except Exception:  # a broken CUDA runtime (e.g. no driver) must fall back to the CPU
        return False


def resolve_device(device: str) -> str:
    """Maps ``"auto" | "cpu" | "cuda"`` to ``"cpu"`` or ``"cuda"``."""
    if device not in DEVICES:
        raise ValueError(f"Unknown device {device!r}; choose one of {', '.join(DEVICES)}.")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise ValueError("device='cuda' was requested but ASTRA finds no usable CUDA GPU; "
                         "use device='cpu' or 'auto'.")
    return device


def _rotated(x: np.ndarray, y: np.ndarray, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points ``(x, y)`` of the first view's frame at every angle: rows ``views``."""
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
    x, y = np.atleast_1d(x)[None, :], np.atleast_1d(y)[None, :]
    return x * cos - y * sin, x * sin + y * cos


def vector_geometry(geometry: Geometry) -> dict:
    """ASTRA vector geometry (``parallel_vec`` / ``fanflat_vec``) of any :class:`Geometry`.

    Rows follow the conventions of :mod:`sparsect.physics.geometry`: the first view's
    frame is rotated by each angle. ASTRA has no 2D curved detector, so a curved one is
    built exactly from one single-bin flat detector per (view, bin), each tangent to the
    arc at its bin's centre: with the line kernel every ray runs from the source to a bin
    centre, as on the arc. Its ``views * detector_count`` rows, view-major, have the
    layout of a ``(views, detector_count)`` sinogram (:func:`astra_sinogram_shape`)."""
    angles = geometry.angles()
    spacing, offset = geometry.detector_spacing_mm, geometry.axis_offset_mm
    if geometry.beam == "parallel":
        centre = geometry.detector_shift_mm - offset
        ray = _rotated(np.array([0.0]), np.array([-1.0]), angles)
        detector = _rotated(np.array([centre]), np.array([0.0]), angles)
        u = _rotated(np.array([spacing]), np.array([0.0]), angles)
        vectors = np.concatenate([*ray, *detector, *u], axis=1)
        return astra.create_proj_geom("parallel_vec", geometry.detector_count, vectors)
    d_so, d_sd = geometry.source_isocenter_mm, geometry.source_detector_mm
    source = _rotated(np.array([-offset]), np.array([-d_so]), angles)
    if geometry.detector_shape == "flat":
        detector = _rotated(np.array([geometry.detector_shift_mm - offset]),
                            np.array([d_sd - d_so]), angles)
        u = _rotated(np.array([spacing]), np.array([0.0]), angles)
        vectors = np.concatenate([*source, *detector, *u], axis=1)
        return astra.create_proj_geom("fanflat_vec", geometry.detector_count, vectors)
    gamma = geometry.bin_positions_mm() / d_sd  # fan angle of each bin from the central ray
    bins = gamma.size
    detector = _rotated(-offset + d_sd * np.sin(gamma), -d_so + d_sd * np.cos(gamma), angles)
    u = _rotated(spacing * np.cos(gamma), -spacing * np.sin(gamma), angles)
    source = [np.repeat(part, bins, axis=1) for part in source]
    vectors = np.stack([part.ravel() for part in (*source, *detector, *u)], axis=1)
    return astra.create_proj_geom("fanflat_vec", 1, vectors)


def astra_sinogram_shape(geometry: Geometry) -> tuple[int, int]:
    """Shape of ASTRA's sinogram data for ``geometry``: ``(views, detector_count)``, or
    ``(views * detector_count, 1)`` for a curved detector (:func:`vector_geometry`)."""
    if geometry.detector_shape == "curved":
        return (geometry.views * geometry.detector_count, 1)
    return geometry.sinogram_shape


def astra_geometries(geometry: Geometry) -> tuple[dict, dict]:
    """ASTRA ``(volume, projection)`` geometry dicts, both in mm: ASTRA's ``parallel`` or
    ``fanflat`` for an aligned scanner, :func:`vector_geometry` otherwise."""
    half = geometry.image_size * geometry.pixel_size_mm / 2.0
    n = geometry.image_size
    volume = astra.create_vol_geom(n, n, -half, half, -half, half)
    if not geometry.is_aligned:
        return volume, vector_geometry(geometry)
    if geometry.beam == "parallel":
        projection = astra.create_proj_geom("parallel", geometry.detector_spacing_mm,
                                            geometry.detector_count, geometry.angles())
    else:
        projection = astra.create_proj_geom(
            "fanflat", geometry.detector_spacing_mm, geometry.detector_count,
            geometry.angles(), geometry.source_isocenter_mm,
            geometry.source_detector_mm - geometry.source_isocenter_mm)
    return volume, projection


class Projector:
    """Forward projection, its adjoint and FBP for one geometry, reusable across slices.

    Not thread-safe; use one per process (it pickles as its settings and rebuilds
    the ASTRA objects on unpickling).

    Args:
        geometry: Acquisition geometry and reconstruction grid.
        device: ``"auto"`` (CUDA if ASTRA can use it), ``"cpu"`` or ``"cuda"``.

    >>> from sparsect.physics import Geometry, Projector
    >>> g = Geometry("parallel", views=30, image_size=64, pixel_size_mm=1.0)
    >>> with Projector(g, device="cpu") as A:
    ...     sino = A.forward(np.full((64, 64), 0.02, np.float32))
    ...     image = A.fbp(sino)
    >>> sino.shape, image.shape
    ((30, 94), (64, 64))
    """

    def __init__(self, geometry: Geometry, device: str = "auto") -> None:
        self.geometry = geometry
        self._requested_device = device
        self.device = resolve_device(device)
        self._volume_geom, self._projection_geom = astra_geometries(geometry)
        kernel = "cuda" if self.device == "cuda" else _CPU_KERNEL[geometry.beam]
        self._projector_id: int | None = astra.create_projector(
            kernel, self._projection_geom, self._volume_geom)

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(image_size, image_size)``."""
        return self.geometry.image_shape

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        """``(views, detector_count)``."""
        return self.geometry.sinogram_shape

    def forward(self, mu: np.ndarray) -> np.ndarray:
        """Line integrals of ``mu``.

        Args:
            mu: ``(image_size, image_size)`` attenuation in 1/mm.

        Returns:
            ``(views, detector_count)`` float32 line integrals (dimensionless).
        """
        mu = self._checked(mu, self.image_shape, "image")
        return self._run("FP", volume=mu, sinogram=None, output="sinogram")

    def adjoint(self, sinogram: np.ndarray) -> np.ndarray:
        """Backprojection ``A^T y``: the transpose of :meth:`forward`, same scaling.

        On the CPU it is the exact transpose of the same sparse matrix. ASTRA's
        CUDA backprojector is a different discretisation, so there it is only
        approximately matched.

        Args:
            sinogram: ``(views, detector_count)``.

        Returns:
            ``(image_size, image_size)`` float32.
        """
        sinogram = self._checked(sinogram, self.sinogram_shape, "sinogram")
        return self._run("BP", volume=None, sinogram=sinogram, output="volume")

    def fbp(self, sinogram: np.ndarray, filter: str = "ram-lak") -> np.ndarray:  # noqa: A002
        """Filtered backprojection.

        Args:
            sinogram: ``(views, detector_count)`` line integrals.
            filter: ``"ram-lak"``, ``"shepp-logan"``, ``"cosine"`` or ``"hann"``.

        Returns:
            ``(image_size, image_size)`` float32 ``mu`` in 1/mm.
        """
        check_filter(filter)
        sinogram = self._checked(sinogram, self.sinogram_shape, "sinogram")
        if not self.geometry.is_aligned:
            if self.geometry.beam == "fan":
                return fan_fbp(sinogram, self.geometry, filter)
            # ASTRA's FBP takes only its aligned 'parallel' geometry: rebin onto it. (Its
            # backprojector's weights depend on where a ray crosses each pixel, so
            # backprojecting at the measured, shifted positions instead would add a
            # pattern of ~10 HU that depends on the shift's fraction of a bin.)
            from .rebin import to_aligned

            rebinned, aligned = to_aligned(sinogram, self.geometry)
            with Projector(aligned, self._requested_device) as projector:
                return projector.fbp(rebinned, filter)
        if self.device == "cpu" and self.geometry.beam == "fan":
            # ASTRA's CPU FBP only supports parallel beams.
            return fan_fbp(sinogram, self.geometry, filter)
        options: dict[str, Any] = {"FilterType": filter}
        if self.geometry.beam == "fan" and self.geometry.angular_range_deg < 360.0:
            options["ShortScan"] = True  # Parker weights in FBP_CUDA
        return self.run_algorithm("FBP", sinogram, options=options)

    def run_algorithm(self, name: str, sinogram: np.ndarray, iterations: int = 1,
                      options: dict[str, Any] | None = None,
                      initial: np.ndarray | None = None) -> np.ndarray:
        """Runs an ASTRA reconstruction algorithm (``"FBP"``, ``"SIRT"``, ``"SART"``, ``"CGLS"``).

        The ``_CUDA`` variant is used on the GPU. ``options`` is ASTRA's
        ``cfg['option']`` dict; ``initial`` an optional starting image.

        Returns:
            ``(image_size, image_size)`` float32 image.
        """
        sinogram = self._checked(sinogram, self.sinogram_shape, "sinogram")
        start = None if initial is None else self._checked(initial, self.image_shape, "image")
        return self._run(name, volume=start, sinogram=sinogram, output="volume",
                         iterations=iterations, options=options)

    def _run(self, name: str, *, volume: np.ndarray | None, sinogram: np.ndarray | None,
             output: str, iterations: int = 1, options: dict[str, Any] | None = None,
             ) -> np.ndarray:
        if self._projector_id is None:
            raise RuntimeError("This Projector is closed.")
        volume_id = sinogram_id = algorithm_id = None
        astra_shape = astra_sinogram_shape(self.geometry)
        try:
            volume_id = astra.data2d.create("-vol", self._volume_geom,
                                            0.0 if volume is None else volume)
            sinogram_id = astra.data2d.create(
                "-sino", self._projection_geom,
                0.0 if sinogram is None else sinogram.reshape(astra_shape))
            cfg = astra.astra_dict(name + ("_CUDA" if self.device == "cuda" else ""))
            cfg["ProjectorId"] = self._projector_id
            cfg["ProjectionDataId"] = sinogram_id
            # FP reads the volume from 'VolumeDataId'; the others write 'ReconstructionDataId'.
            cfg["VolumeDataId" if name == "FP" else "ReconstructionDataId"] = volume_id
            cfg["option"] = dict(options or {})
            algorithm_id = astra.algorithm.create(cfg)
            astra.algorithm.run(algorithm_id, iterations)
            if output == "volume":
                return np.asarray(astra.data2d.get(volume_id), dtype=np.float32)
            result = astra.data2d.get(sinogram_id).reshape(self.sinogram_shape)
            return np.asarray(result, dtype=np.float32)
        finally:
            if algorithm_id is not None:
                astra.algorithm.delete(algorithm_id)
            for data_id in (volume_id, sinogram_id):
                if data_id is not None:
                    astra.data2d.delete(data_id)

    @staticmethod
    def _checked(array: np.ndarray, shape: tuple[int, int], what: str) -> np.ndarray:
        array = np.asarray(array, dtype=np.float32)
        if array.shape != shape:
            raise ValueError(f"Expected a {what} of shape {shape}, got {array.shape}.")
        return np.ascontiguousarray(array)

    def close(self) -> None:
        """Frees the ASTRA projector (idempotent)."""
        if getattr(self, "_projector_id", None) is not None:
            astra.projector.delete(self._projector_id)
            self._projector_id = None

    def __enter__(self) -> Projector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Best effort at interpreter shutdown; explicit close() is the contract.
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"geometry": self.geometry, "device": self._requested_device}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["geometry"], state["device"])

    def __repr__(self) -> str:
        return f"Projector({self.geometry!r}, device={self.device!r})"

