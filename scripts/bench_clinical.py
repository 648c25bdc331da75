#!/usr/bin/env python
"""Time per slice and peak memory of the pipeline at the clinical grid.

Composes ``conf/`` with ``experiment=clinical`` (512 x 512 pixels of 0.75 mm, the
clinical fan beam, its default view count) plus any ``key=value`` overrides, and
measures three parts on phantom slices made by the built-in generator:

(a) simulate: one slice through :class:`sparsect.physics.Simulator` (projection from
    the ``physics.upsample`` times finer grid, noise, FBP), as the ``simulate`` stage
    does per slice;
(b) train: one optimisation step (forward, loss, backward, AdamW step) of ``sg_unet``
    at the configured ``trainer.crop`` and ``trainer.batch_size``, and on whole
    512 x 512 slices (``--full-batch`` of them); the module is the one ``train``
    builds, at the configured ``model`` widths;
(c) reconstruct: FBP of a volume of ``--slices`` sinograms, then the network on all of
    them through :func:`sparsect.models.predict.predict` (what
    ``Reconstructor.from_sinograms`` does), with an untrained ``sg_unet`` of the same
    size (the weights do not change the cost).

Times are wall-clock means over the timed repeats after warm-up calls (which build the
ASTRA projectors and let torch pick its kernels). Memory: every part runs in a
subprocess of its own, so one part's high-water mark does not hide another's, started
from this parent process, which imports only the standard library (a child's
``ru_maxrss`` starts from its parent's high-water mark). ``*_peak_rss`` is the
subprocess's ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, interpreter and libraries
included; ``*_rss_at_start`` is its resident set just before the measured work (after
imports and set-up), so the difference is what the work itself needs. On CUDA,
``*_cuda_peak`` is torch's allocator peak over the timed calls
(``torch.cuda.max_memory_allocated``); ASTRA's own GPU buffers are not in it. The
phantom slices and their sinograms are made beforehand, in a subprocess of their own.

    PYTHONPATH=src python scripts/bench_clinical.py [--device cpu|cuda] [--slices 8]
        [--repeats 3] [--full-batch N] [key=value ...]

``--device cuda`` runs the physics on ASTRA's CUDA code and the network on the GPU,
composed with ``trainer=gpu`` (bf16 autocast), as a GPU run trains.
Each figure is printed on its own line as ``name: value unit``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHANTOM_SEED = 2024


def _cfg(device: str, overrides: list[str]):  # noqa: ANN202 - DictConfig, imported lazily
    from omegaconf import OmegaConf

    from sparsect.config import compose

    groups = ["experiment=clinical"] + (["trainer=gpu"] if device == "cuda" else [])
    return OmegaConf.create(compose(ROOT / "conf", [*groups, *overrides]))


def _peak_rss_mib() -> float:
    import resource

    # ru_maxrss is in KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _rss_at_start(name: str) -> None:
    """Reports the resident set now (after imports and set-up, before the measured work):
    ``peak - at_start`` is what the work itself adds. Linux only (``/proc``)."""
    statm = Path("/proc/self/statm")
    if statm.is_file():
        pages = int(statm.read_text().split()[1])
        _report(f"{name}_rss_at_start", pages * os.sysconf("SC_PAGE_SIZE") / 2**20, "MiB")


def _report(name: str, value: float, unit: str) -> None:
    print(f"{name}: {value:.1f} {unit}", flush=True)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _cuda_reset(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _cuda_peak(device: str, name: str) -> None:
    if device == "cuda":
        import torch

        _report(f"{name}_cuda_peak", torch.cuda.max_memory_allocated() / 2**20, "MiB")


def part_settings(args: argparse.Namespace) -> None:
    """The composed settings the parts use, as JSON (keeps the parent process light)."""
    from omegaconf import OmegaConf

    from sparsect.settings import geometry_from_cfg

    cfg = _cfg(args.device, args.overrides)
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings["geometry"] = geometry_from_cfg(cfg).to_dict()  # detector resolved
    print(json.dumps(settings))


def part_inputs(args: argparse.Namespace) -> None:
    """Phantom slices on the clinical grid and their simulated sinograms, into ``work``."""
    import numpy as np

    from sparsect.data.io import axial_slices
    from sparsect.data.phantom import PhantomConfig, generate_subject
    from sparsect.physics import Simulator
    from sparsect.settings import geometry_from_cfg, noise_from_cfg

    cfg = _cfg(args.device, args.overrides)
    size, pixel = int(cfg.data.image_size), float(cfg.data.pixel_size_mm)
    z_mm = float(cfg.data.phantom.spacing_mm[2])
    config = PhantomConfig(shape=(size, size, args.slices), spacing_mm=(pixel, pixel, z_mm))
    hu = axial_slices(generate_subject(0, PHANTOM_SEED, config)[0]).astype(np.float32)
    geometry = geometry_from_cfg(cfg)
    with Simulator(geometry, noise_from_cfg(cfg), upsample=int(cfg.physics.upsample),
                   device=args.device, filter=str(cfg.physics.filter)) as simulator:
        sinograms = np.stack([simulator(image, i)[0] for i, image in enumerate(hu)])
    np.save(args.work / "hu.npy", hu)
    np.save(args.work / "sinogram.npy", sinograms)
    (args.work / "geometry.json").write_text(json.dumps(geometry.to_dict()))


def part_simulate(args: argparse.Namespace) -> None:
    import numpy as np

    from sparsect.physics import Simulator
    from sparsect.settings import geometry_from_cfg, noise_from_cfg

    cfg = _cfg(args.device, args.overrides)
    hu = np.load(args.work / "hu.npy")[0]
    with Simulator(geometry_from_cfg(cfg), noise_from_cfg(cfg),
                   upsample=int(cfg.physics.upsample), device=args.device,
                   filter=str(cfg.physics.filter)) as simulator:
        _rss_at_start("simulate")
        start = time.perf_counter()
        simulator(hu, seed=0)  # builds the ASTRA projectors of both grids
        first = time.perf_counter() - start
        start = time.perf_counter()
        for seed in range(1, args.repeats + 1):
            simulator(hu, seed)
        per_slice = (time.perf_counter() - start) / args.repeats
    _report("simulate_first_slice", first * 1e3, "ms")
    _report("simulate_time_per_slice", per_slice * 1e3, "ms")
    _report("simulate_peak_rss", _peak_rss_mib(), "MiB")


def part_train(args: argparse.Namespace) -> None:
    import torch

    from sparsect.physics.units import HU_SCALE
    from sparsect.priors.classes import NUM_TISSUE_CLASSES
    from sparsect.stages.train import module_from_cfg

    cfg = _cfg(args.device, args.overrides)
    torch.manual_seed(int(cfg.seed))
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    module = module_from_cfg(cfg, "sg_unet", int(cfg.geometry.views)).to(device)
    if cuda:
        torch.backends.cudnn.benchmark = True
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=float(cfg.trainer.lr),
                                  weight_decay=float(cfg.trainer.weight_decay))
    bf16 = cuda and "bf16" in str(cfg.trainer.precision)
    shape = (args.batch, int(cfg.model.context_slices), args.size, args.size)
    # FBP and target in the network's units (hu / HU_SCALE, see ReconModule)
    batch = {"fbp": torch.randn(shape, device=device) * 500.0 / HU_SCALE,
             "target": torch.randn((args.batch, 1, args.size, args.size),
                                   device=device) * 500.0 / HU_SCALE,
             "masks": torch.randint(0, NUM_TISSUE_CLASSES, (args.batch, args.size, args.size),
                                    device=device)}

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_train import train_step  # the step bench_train times

    def step() -> None:
        train_step(module, optimizer, batch, bf16)

    _rss_at_start(f"train_{args.label}")
    for _ in range(args.warmup):
        step()
    _cuda_reset(args.device)
    start = time.perf_counter()
    for _ in range(args.repeats):
        step()
    _sync(args.device)
    per_step = (time.perf_counter() - start) / args.repeats
    name = f"train_{args.label}"
    _report(f"{name}_time_per_step", per_step * 1e3, "ms")
    _report(f"{name}_time_per_slice", per_step / args.batch * 1e3, "ms")
    _report(f"{name}_peak_rss", _peak_rss_mib(), "MiB")
    _cuda_peak(args.device, name)


def part_reconstruct(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from sparsect.models.predict import predict
    from sparsect.physics import Geometry, Projector, mu_to_hu, reconstruct
    from sparsect.stages.train import module_from_cfg

    cfg = _cfg(args.device, args.overrides)
    torch.manual_seed(int(cfg.seed))
    sinograms = np.load(args.work / "sinogram.npy")
    geometry = Geometry.from_dict(json.loads((args.work / "geometry.json").read_text()))
    module = module_from_cfg(cfg, "sg_unet", geometry.views).to(args.device).eval()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    filter_name = str(cfg.physics.filter)
    with Projector(geometry, args.device) as projector:

        def fbp_volume() -> np.ndarray:
            return np.stack([mu_to_hu(reconstruct("fbp", projector, sinogram,
                                                  filter=filter_name))
                             for sinogram in sinograms])

        _rss_at_start("reconstruct")
        predict(module, fbp_volume())  # warm-up: kernels, cuDNN autotuning
        _cuda_reset(args.device)
        fbp_time = net_time = 0.0
        for _ in range(args.repeats):
            start = time.perf_counter()
            images = fbp_volume()
            fbp_time += time.perf_counter() - start
            start = time.perf_counter()
            predict(module, images)
            _sync(args.device)
            net_time += time.perf_counter() - start
    per = 1e3 / (args.repeats * len(sinograms))
    _report("reconstruct_fbp_time_per_slice", fbp_time * per, "ms")
    _report("reconstruct_network_time_per_slice", net_time * per, "ms")
    _report("reconstruct_time_per_slice", (fbp_time + net_time) * per, "ms")
    _report("reconstruct_peak_rss", _peak_rss_mib(), "MiB")
    _cuda_peak(args.device, "reconstruct")


PARTS = {"settings": part_settings, "inputs": part_inputs,
         "simulate": part_simulate, "train": part_train, "reconstruct": part_reconstruct}


def _run_part(part: str, args: argparse.Namespace, work: Path, *extra: str,
              relay: bool = True) -> str:
    """Runs one part in a fresh interpreter; relays its output and returns it."""
    command = [sys.executable, __file__, "--part", part, "--work", str(work),
               "--device", args.device, "--slices", str(args.slices),
               "--repeats", str(args.repeats), "--warmup", str(args.warmup), *extra,
               *args.overrides]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"part '{part}' failed:\n{result.stdout}\n{result.stderr}")
    if relay:
        print(result.stdout, end="", flush=True)
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--slices", type=int, default=8,
                        help="slices of the volume reconstructed in (c)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per figure")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    parser.add_argument("--full-batch", type=int, default=None,
                        help="whole 512 x 512 slices per training step in (b) (default: 2 "
                             "on the CPU, trainer.batch_size on CUDA)")
    parser.add_argument("--part", choices=tuple(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--label", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    unknown = [o for o in overrides if o.startswith("-") or "=" not in o]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (overrides are key=value)")
    args.overrides = overrides
    if args.part:
        PARTS[args.part](args)
        return

    with tempfile.TemporaryDirectory(prefix="bench_clinical.") as tmp:
        run(args, Path(tmp))


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run(args: argparse.Namespace, work: Path) -> None:
    """Every part, each in its own subprocess, with ``work`` for the shared inputs."""
    settings = json.loads(_run_part("settings", args, work, relay=False))
    geometry, trainer, model = settings["geometry"], settings["trainer"], settings["model"]
    size = int(geometry["image_size"])
    crop = size if trainer["crop"] is None else min(int(trainer["crop"]), size)
    batch = int(trainer["batch_size"])
    full_batch = args.full_batch or (batch if args.device == "cuda" else 2)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"machine: {_cpu_name()}, {os.cpu_count()} CPUs, "
          f"{memory:.0f} GiB, {platform.system()} {platform.release()}; device {args.device}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"grid: {size} x {size} at {geometry['pixel_size_mm']} mm; {geometry['beam']} beam, "
          f"{geometry['views']} views x {geometry['detector_count']} bins; upsample "
          f"{settings['physics']['upsample']}, filter {settings['physics']['filter']}, "
          f"i0 {settings['noise']['i0']}")
    print(f"sg_unet: channels {model['channels']}, depth {model['depth']}, seg_channels "
          f"{model['seg_channels']}; precision {trainer['precision']}; "
          f"{args.repeats} timed repeats after warm-up")
    start = time.perf_counter()
    _run_part("inputs", args, work)
    print(f"(phantom slices and their sinograms made in {time.perf_counter() - start:.0f} s)")
    print("(a) simulate: one slice")
    _run_part("simulate", args, work)
    print(f"(b) train: one step, batch {batch} of {crop} x {crop} crops")
    _run_part("train", args, work, "--size", str(crop), "--batch", str(batch),
              "--label", f"crop{crop}")
    print(f"(b) train: one step, batch {full_batch} of whole {size} x {size} slices")
    _run_part("train", args, work, "--size", str(size), "--batch", str(full_batch),
              "--label", f"full{size}")
    print(f"(c) reconstruct: FBP + network on a volume of {args.slices} slices")
    _run_part("reconstruct", args, work)
    if args.device == "cuda":
        print("(CUDA peaks are torch's allocator; ASTRA's GPU buffers are not included)")


if __name__ == "__main__":
    main()
