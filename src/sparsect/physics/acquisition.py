"""The acquisition: how a reference slice becomes measurements and the FBP a method reads.

One :class:`Acquisition` holds everything that decides the data: the geometry, the
noise model, the simulation grid (``upsample``), the FBP filter, the HU clip of the
references and the rule that gives every slice its own noise seed. Every driver that
simulates or reconstructs stacks (the ``simulate`` stage, the task cohort, the real
scans, ``sparsect reconstruct``, the served model, the export) builds one, from the
config (:func:`sparsect.settings.acquisition_from_cfg`) or from what a checkpoint
records (:meth:`Acquisition.from_record`), so a model always sees data made as its
training data were.

The seed rule: slice ``key`` of an acquisition with base seed ``s`` and ``V`` views is
seeded by ``SeedSequence([s, V, *key])``. A key names the slice in its collection
(``(split, index)`` for the phantom splits, ``(crc32(scan), index)`` for a scan,
``(7, class, realisation, subject, slice)`` for the cohort), so a slice's noise does not
depend on which process or shard simulates it.

Measured data will add what a scanner records beside the geometry (a detector offset,
a curved detector, flat and dark fields); they belong here, next to the noise.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from .fanrebin import parallel_target
from .filters import check_filter
from .geometry import Geometry
from .noise import NoiseModel
from .simulate import Simulator, input_fbp

SINOGRAM_UNITS = ("attenuation", "linear")
"""What a sinogram holds: line integrals of ``mu`` in 1/mm (``attenuation``, as simulated
here) or ``A x`` of an image in its own units (``linear``, e.g. a benchmark's)."""

_WORKER: dict[str, Simulator] = {}


def scan_key(name: str) -> int:
    """The key part that names a scan in the seed rule (a stable 32-bit hash of its name).

    >>> scan_key("abdomen_ct")
    3330063378
    """
    return zlib.crc32(name.encode())


@dataclass(frozen=True)
class Acquisition:
    """The geometry, noise, simulation grid, FBP filter and seed rule of a data set.

    Attributes:
        geometry: Beam, views, detector and reconstruction grid.
        noise: Photon (and electronic) noise of the measurements.
        upsample: Simulation grid refinement (no inverse crime; 1 commits it).
        filter: FBP filter of the images methods read.
        hu_clip: ``(low, high)`` HU range references are clipped to (None: unclipped).
        seed: Base seed of the per-slice seed rule.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` for ASTRA and the torch operator.
        sinogram: What a sinogram holds (:data:`SINOGRAM_UNITS`).
        input_parallel_views: Fan beam: the FBP methods read is made from the sinogram
            rebinned onto a parallel-beam one of this many angles over 180 degrees
            (:mod:`.fanrebin`); None: the fan-beam FBP itself.

    >>> g = Geometry("parallel", views=30, image_size=32, pixel_size_mm=2.0)
    >>> acquisition = Acquisition(g, NoiseModel(i0=1e5), device="cpu")
    >>> sinograms, fbp = acquisition.simulate(np.zeros((2, 32, 32), np.float32), [(0,), (1,)])
    >>> sinograms.shape, fbp.shape
    ((2, 30, 48), (2, 32, 32))
    >>> bool(np.array_equal(acquisition.fbp(sinograms), fbp))
    True
    """

    geometry: Geometry
    noise: NoiseModel
    upsample: int = 2
    filter: str = "ram-lak"
    hu_clip: tuple[float, float] | None = None
    seed: int = 0
    device: str = "auto"
    sinogram: str = "attenuation"
    input_parallel_views: int | None = None

    def __post_init__(self) -> None:
        check_filter(self.filter)
        if not (isinstance(self.upsample, int) and self.upsample >= 1):
            raise ValueError(f"upsample must be an integer >= 1, got {self.upsample!r}.")
        if self.sinogram not in SINOGRAM_UNITS:
            raise ValueError(f"acquisition.sinogram '{self.sinogram}' is unknown: use "
                             f"{' or '.join(SINOGRAM_UNITS)}.")
        views = self.input_parallel_views
        if views is not None:
            if isinstance(views, bool) or not isinstance(views, int) or views < 1:
                raise ValueError(f"input_parallel_views must be a positive integer or null, "
                                 f"got {views!r}.")
            if self.geometry.beam != "fan":
                raise ValueError(f"input_parallel_views ({views}) rebins fan-beam data; this "
                                 f"geometry is {self.geometry.beam} beam, so set it to null.")
            try:
                parallel_target(self.geometry, views)
            except ValueError as error:
                raise ValueError(f"input_parallel_views ({views}) does not fit this image "
                                 f"grid ({str(error).rstrip('.')}): lower it.") from None

    # -- records ---------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """How the data are made, as checkpoints record it (``acquisition`` beside
        ``geometry`` and ``noise``)."""
        out: dict[str, Any] = {"upsample": self.upsample, "filter": self.filter,
                               "hu_clip": None if self.hu_clip is None else list(self.hu_clip)}
        if self.sinogram != "attenuation":
            out["sinogram"] = self.sinogram
        if self.input_parallel_views is not None:
            out["input_parallel_views"] = self.input_parallel_views
        return out

    @classmethod
    def from_record(cls, geometry: Mapping[str, Any], noise: Mapping[str, Any] | None,
                    acquisition: Mapping[str, Any] | None, seed: int = 0,
                    device: str = "auto") -> Acquisition:
        """From a checkpoint's ``geometry``, ``noise`` and ``acquisition`` hyperparameters
        (or a ``simulate`` output's ``geometry.json``); missing parts take the defaults of
        the checkpoints written before they were recorded."""
        acquisition = dict(acquisition or {})
        clip = acquisition.get("hu_clip")
        parallel = acquisition.get("input_parallel_views")
        return cls(Geometry.from_dict(dict(geometry)), NoiseModel(**dict(noise or {})),
                   upsample=int(acquisition.get("upsample", 2)),
                   filter=str(acquisition.get("filter", "ram-lak")),
                   hu_clip=None if clip is None else (float(clip[0]), float(clip[1])),
                   seed=int(seed), device=device,
                   sinogram=str(acquisition.get("sinogram", "attenuation")),
                   input_parallel_views=None if parallel is None else int(parallel))

    @classmethod
    def of_module(cls, module: Any, seed: int = 0, device: str = "auto") -> Acquisition:
        """The acquisition a trained model records in its hyperparameters."""
        hparams = module.hparams
        return cls.from_record(hparams.geometry, hparams.get("noise"),
                               hparams.get("acquisition"), seed, device)

    def replace(self, **changes: Any) -> Acquisition:
        """A copy with ``changes`` (e.g. ``views`` for the geometry, ``noise``, ``device``)."""
        views = changes.pop("views", None)
        if views is not None:
            changes["geometry"] = self.geometry.with_views(int(views))
        return dataclasses.replace(self, **changes)

    # -- the seed rule ---------------------------------------------------------------

    def slice_seed(self, *key: int) -> int:
        """The noise seed of the slice named ``key`` (see the module docstring)."""
        sequence = np.random.SeedSequence([self.seed, self.geometry.views, *key])
        return int(sequence.generate_state(1)[0])

    # -- data ------------------------------------------------------------------------

    def simulator(self) -> Simulator:
        """A one-process :class:`Simulator` of this acquisition (close it after use)."""
        return Simulator(self.geometry, self.noise, upsample=self.upsample,
                         device=self.device, filter=self.filter,
                         input_parallel_views=self.input_parallel_views)

    def simulate(self, hu: np.ndarray | Sequence[np.ndarray], keys: Sequence[Sequence[int]],
                 workers: int = 1, progress: str | None = None,
                 out: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Noisy sparse-view sinograms of ``(N, H, W)`` reference slices in HU and their FBP.

        Args:
            hu: The references on the reconstruction grid: an array (a memory map is
                read slice by slice), or a sequence of ``(H, W)`` slices.
            keys: Each slice's key in the seed rule.
            workers: Processes (one pool, each with its own ASTRA projectors); the
                result does not depend on it.
            progress: A progress bar with this label (none without).
            out: Arrays to write ``(sinograms, fbp_hu)`` into (e.g. memory maps of the
                stage's output files), instead of new ones.

        Returns:
            ``(sinograms, fbp_hu)``: float32 ``(N, views, detectors)`` line integrals and
            float32 ``(N, H, W)`` FBP in HU.
        """
        if not isinstance(hu, (list, tuple)):
            hu = np.asarray(hu)
        if len(keys) != len(hu):
            raise ValueError(f"{len(keys)} seed keys for {len(hu)} slices")
        seeds = [self.slice_seed(*key) for key in keys]
        shape = self.geometry.image_shape
        if out is None:
            sinograms = np.empty((len(hu), *self.geometry.sinogram_shape), np.float32)
            fbp = np.empty((len(hu), *shape), np.float32)
        else:
            sinograms, fbp = out
        if len(hu) == 0:
            return sinograms, fbp
        workers = max(1, min(int(workers), len(hu)))
        if workers == 1:
            with self.simulator() as simulate:
                for i, (image, seed) in enumerate(zip(hu, seeds, strict=True)):
                    sinograms[i], fbp[i] = simulate(image, seed)
            return sinograms, fbp
        # Chunks of slices go to the pool a few at a time and their results are written
        # as they come back, in order: the slices in flight, not the cohort, set the
        # memory (pool.map would pickle every slice up front).
        size = max(1, min(_CHUNK_SLICES, len(hu) // (4 * workers)))
        starts = range(0, len(hu), size)
        with ProcessPoolExecutor(workers, initializer=_init_worker,
                                 initargs=(self.simulator(),)) as pool, \
                tqdm(total=len(hu), unit="slice", desc=progress,
                     disable=progress is None) as bar:
            flight: deque = deque()
            for start in [*starts, None]:
                if start is not None:
                    stop = min(start + size, len(hu))
                    chunk = [(np.asarray(hu[i]), seeds[i]) for i in range(start, stop)]
                    flight.append((start, pool.submit(_simulate_chunk, chunk)))
                while flight and (start is None or len(flight) > 2 * workers):
                    first, future = flight.popleft()
                    results = future.result()
                    for i, (sinogram, image) in enumerate(results, start=first):
                        sinograms[i], fbp[i] = sinogram, image
                    bar.update(len(results))
        return sinograms, fbp

    def fbp(self, sinograms: np.ndarray) -> np.ndarray:
        """``(N, views, detectors)`` line integrals -> ``(N, H, W)`` float32 FBP in HU with
        this acquisition's filter (the image the learned methods read), through the
        parallel-beam rebinning where ``input_parallel_views`` is set."""
        return input_fbp(sinograms, self.geometry, self.filter, self.input_parallel_views,
                         self.device)

    def describe(self) -> dict[str, Any]:
        """Geometry, noise and how the data were made, as ``simulate`` records them."""
        out = {"geometry": self.geometry.to_dict(), "noise": asdict(self.noise),
               "upsample": self.upsample, "filter": self.filter}
        if self.input_parallel_views is not None:
            out["input_parallel_views"] = self.input_parallel_views
        return out


def _init_worker(simulator: Simulator) -> None:
    # One Simulator (and its ASTRA projectors) per process, reused for every slice.
    _WORKER["simulator"] = simulator


_CHUNK_SLICES = 8
"""Slices a worker of :meth:`Acquisition.simulate` takes at once."""


def _simulate_chunk(jobs: list[tuple[np.ndarray, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [_WORKER["simulator"](*job) for job in jobs]

