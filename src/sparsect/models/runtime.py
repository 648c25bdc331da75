"""The network of a trained model as an ONNX graph, in float and in INT8.

A model is applied by :func:`sparsect.models.predict.predict`, whatever runs its
network: 2.5D context, the prior input, mirror averaging and the data-consistency
step stay in that one function, and only the call ``reconstruct_hu(fbp, prior)``
changes runtime. :class:`OnnxModule` is a model whose network runs in onnxruntime;
everything else (hyper-parameters, geometry, the CT operator of ``+dc``) is the
torch module's.

The graph's contract, the same for every exported model:

- input ``fbp``: ``(batch, context, H, W)`` float32 FBP slices in **HU** (the slice
  and its axial neighbours as channels for a 2.5D model; ``H, W`` the model's grid);
  ``batch`` is dynamic;
- input ``prior`` (threshold-prior models): ``(batch, classes, H, W)`` one-hot
  tissue classes of the FBP; (models that read an earlier scan, ``prior: scan``):
  ``(batch, 1 + organ classes, H, W)``, the earlier scan registered to the slice in
  network units (``HU / hu_scale``) and its organ map one-hot
  (:func:`sparsect.priors.organs.scan_prior`);
- output ``recon``: ``(batch, 1, H, W)`` float32 in HU; output ``probs`` (models that
  predict their prior): ``(batch, classes, H, W)`` tissue-class probabilities.

The ``HU / hu_scale`` normalisation and its inverse are inside the graph, so a caller
feeds and reads HU. Networks that apply the CT operator inside (``operator: true`` in
the variant table) are not exported: ONNX has no sparse CT projector, and splitting
the unrolled scheme into one graph per iteration with the projections in between
would ship a model whose most expensive step is not in the file.

Only torch is imported at the top: ``onnx`` and ``onnxruntime`` are imported where
they are used, so the package loads on machines without them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparsect.errors import InputError
from sparsect.models.module import ReconModule

RUNTIMES = ("torch", "onnx", "onnx-int8")
"""``sparsect reconstruct --runtime``: the torch module, its float ONNX graph, or the
graph quantized to INT8."""

OPSET = 18
"""ONNX opset of the exported graphs (onnxruntime >= 1.14 runs it; TensorRT 8.6+ too)."""

INT8_OPS = ("Conv", "MaxPool", "Resize", "Concat")
"""Operators quantized to INT8. GroupNorm (exported as InstanceNormalization) and SiLU
have no INT8 kernel in onnxruntime's CPU provider and stay in float; quantizing the
shape-only operators between convolutions lets an INT8 tensor pass through them
without a dequantize-quantize pair."""


def weights_digest(module: nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, shapes, values): an export
    belongs to the weights it was made from, whatever file they were read from."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        array = value.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def check_exportable(module: ReconModule) -> None:
    """Raises :class:`InputError` for a model whose network cannot be one ONNX graph:
    one that applies the CT operator, or an upper bound that reads full-dose masks."""
    name = module.hparams.get("variant") or "this model"
    if module.needs_operator:
        raise InputError(f"Model '{name}' applies the CT operator inside its network "
                         "(operator: true in the variant table), which ONNX cannot express: "
                         "run it with --runtime torch.")
    if str(module.hparams.prior) == "oracle":
        raise InputError(f"Model '{name}' reads full-dose masks (prior oracle) and is an upper "
                         "bound, never deployed: export a deployable model such as sg_unet.")


def input_names(module: ReconModule) -> list[str]:
    return ["fbp", "prior"] if str(module.hparams.prior) in ("threshold", "scan") else ["fbp"]


def prior_channels(module: ReconModule) -> int:
    """Channels of the graph's ``prior`` input: tissue classes, or the earlier scan and
    its organ classes."""
    if str(module.hparams.prior) == "scan":
        from sparsect.priors.organs import ORGAN_CLASSES

        return 1 + ORGAN_CLASSES
    return int(module.hparams.num_classes)


def output_names(module: ReconModule) -> list[str]:
    return ["recon", "probs"] if str(module.hparams.prior) == "predicted" else ["recon"]


class _HUGraph(nn.Module):
    """What is exported: HU in, HU (and class probabilities) out."""

    def __init__(self, module: ReconModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, fbp: torch.Tensor, prior: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        recon, probs = self.module.reconstruct_hu(fbp, prior)
        return recon if probs is None else (recon, probs)


def example_inputs(module: ReconModule, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Inputs of the graph's shape: a uniform water-equivalent square in air."""
    size = int(module.hparams.geometry["image_size"]) if module.hparams.geometry else 64
    fbp = torch.full((batch, module.context, size, size), -1000.0)
    fbp[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 40.0
    if "prior" not in input_names(module):
        return (fbp,)
    prior = torch.zeros(batch, prior_channels(module), size, size)
    prior[:, 0] = 1.0
    if str(module.hparams.prior) == "scan":  # the earlier scan as water, all "body"
        prior[:, 0] = 0.04
        prior[:, 2] = 1.0
    return fbp, prior


def export_onnx(module: ReconModule, path: Path, opset: int = OPSET) -> Path:
    """Writes the network of ``module`` (eval mode, CPU) to ``path`` as one ONNX file
    with a dynamic batch axis (see the module docstring for the contract).

    Raises:
        InputError: for a model that cannot be exported (:func:`check_exportable`).
    """
    import contextlib
    import io
    import logging
    import warnings

    check_exportable(module)
    module = module.cpu().eval()
    inputs = example_inputs(module)
    batch = torch.export.Dim.DYNAMIC
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the exporter reports each of its steps on stdout, warns about its own internals and
    # logs each torchvision operator it finds missing: none of it is about the user's model
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(_HUGraph(module).eval(), inputs, str(path),
                              input_names=input_names(module),
                              output_names=output_names(module),
                              dynamic_shapes=tuple({0: batch} for _ in inputs),
                              opset_version=opset, dynamo=True, external_data=False)
    finally:
        exporter_log.setLevel(level)
    _drop_stack_traces(path)
    return path


def _drop_stack_traces(path: Path) -> None:
    """Removes the exporter's per-node Python stack traces from the graph at ``path``.

    They name the source files by absolute path, so the same weights exported from two
    checkouts gave different files (and DVC saw a changed ``export`` output); they carry
    nothing the graph computes."""
    import onnx

    model = onnx.load(str(path))
    graphs = [model.graph, *(f for f in model.functions)]
    for graph in graphs:
        for node in graph.node:
            kept = [p for p in node.metadata_props if "stack_trace" not in p.key]
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
    onnx.save(model, str(path))


def session(path: Path, threads: int | None = None):  # noqa: ANN201 - an ort.InferenceSession
    """An onnxruntime CPU session on ``threads`` threads (default: torch's thread count,
    so that both runtimes get the same cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise InputError(f"ONNX file '{path}' cannot be loaded ({str(error).splitlines()[0]}): "
                         "export the model again with `sparsect export`.") from None


class OnnxModule:
    """A trained model whose network runs in onnxruntime.

    Behaves as the torch :class:`ReconModule` it wraps for everything
    :func:`~sparsect.models.predict.predict` reads (``hparams``, ``context``,
    ``device``, the CT operator of the data-consistency step); only
    :meth:`reconstruct_hu` runs the ONNX graph at ``path``.

    With ``threads`` > 1 a batch of at least ``threads`` slices is split among
    ``threads`` single-thread sessions that run at once (onnxruntime releases the GIL);
    smaller batches go to one session on all threads. Measured on a 2-core machine
    (sg_unet at 60 views, 128 x 128, through predict, batches of 16): float 31.3-32.3
    and INT8 22.8 ms per slice split, against 41.8 and 39.4 in one two-thread session,
    because GroupNorm, the INT8 graph's layout changes and its (de)quantization barely
    use a second thread inside one session, while two single-thread sessions keep both
    cores busy. The split changes no value (equal to the bit here)."""

    def __init__(self, module: ReconModule, path: Path, runtime: str = "onnx",
                 threads: int | None = None) -> None:
        check_exportable(module)
        self.module, self.path, self.runtime = module.cpu().eval(), Path(path), runtime
        threads = int(threads or torch.get_num_threads())
        self.session = session(path, threads)
        names = [item.name for item in self.session.get_inputs()]
        if names != input_names(module):
            raise InputError(f"ONNX file '{path}' takes inputs {names} but model "
                             f"'{module.hparams.get('variant')}' needs {input_names(module)}: "
                             "export this model again with `sparsect export`.")
        self.outputs = [item.name for item in self.session.get_outputs()]
        self.workers = [session(path, 1) for _ in range(threads)] if threads > 1 else []
        self._pool = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch = len(feeds["fbp"])
        if len(self.workers) < 2 or batch < len(self.workers):
            return self.session.run(self.outputs, feeds)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(len(self.workers))
        bounds = np.linspace(0, batch, len(self.workers) + 1).round().astype(int)
        jobs = [self._pool.submit(worker.run, self.outputs,
                                  {name: value[lo:hi] for name, value in feeds.items()})
                for worker, lo, hi in zip(self.workers, bounds[:-1], bounds[1:], strict=True)]
        parts = [job.result() for job in jobs]
        return [np.concatenate([part[i] for part in parts]) for i in range(len(self.outputs))]

    def reconstruct_hu(self, fbp_hu: torch.Tensor, prior_probs: torch.Tensor | None = None,
                       sinogram: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As :meth:`ReconModule.reconstruct_hu`: ``(B, C, H, W)`` HU ->
        ``((B, 1, H, W) HU, class probabilities | None)``."""
        feeds = {"fbp": np.ascontiguousarray(fbp_hu.cpu().numpy(), np.float32)}
        if prior_probs is not None and "prior" in input_names(self.module):
            feeds["prior"] = np.ascontiguousarray(prior_probs.cpu().numpy(), np.float32)
        results = self._run(feeds)
        probs = torch.from_numpy(results[1]) if len(results) > 1 else None
        return torch.from_numpy(results[0]), probs


class Recorder:
    """Wraps a module and keeps every input its network is given (the calibration set
    of :func:`quantize_int8`: exactly what :func:`predict` feeds, mirrored halves too)."""

    def __init__(self, module: ReconModule) -> None:
        self.module, self.feeds = module, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)

    def reconstruct_hu(self, fbp_hu: torch.Tensor, prior_probs: torch.Tensor | None = None,
                       sinogram: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        for row in range(len(fbp_hu)):  # one slice a call: the calibrators' statistics
            feed = {"fbp": fbp_hu[row: row + 1].numpy().astype(np.float32)}
            if prior_probs is not None and "prior" in input_names(self.module):
                feed["prior"] = prior_probs[row: row + 1].numpy().astype(np.float32)
            self.feeds.append(feed)
        return self.module.reconstruct_hu(fbp_hu, prior_probs, sinogram)


def kept_in_float(path: Path) -> list[str]:
    """The nodes of the graph at ``path`` left in float by :func:`quantize_int8`: going
    back from every output to the first convolution on each branch (the output heads,
    the residual addition of the input slice, the HU scaling)."""
    import onnx

    graph = onnx.load(str(path)).graph
    producer = {name: node for node in graph.node for name in node.output}
    kept, stack = [], [output.name for output in graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in kept:
            continue
        kept.append(node.name)
        if node.op_type != "Conv":
            stack.extend(node.input)
    return kept


def describe_nodes(path: Path, names: Iterable[str]) -> list[str]:
    """``"<op type> -> <its output>"`` for the nodes ``names`` of the graph at ``path``."""
    import onnx

    nodes = {node.name: node for node in onnx.load(str(path)).graph.node}
    return [f"{nodes[name].op_type} -> {nodes[name].output[0]}" for name in names]


CALIBRATIONS = ("minmax", "percentile", "entropy")


def check_calibration(method: str) -> None:
    """Raises :class:`InputError` for a calibration method :func:`quantize_int8` lacks."""
    if method not in CALIBRATIONS:
        raise InputError(f"Calibration method '{method}' (deploy.int8.calibration) is unknown: "
                         f"use one of {', '.join(CALIBRATIONS)}.")


def quantize_int8(float_path: Path, path: Path, feeds: list[dict], method: str = "minmax",
                  ops: tuple[str, ...] = INT8_OPS, reduce_range: bool = True) -> list[str]:
    """Static INT8 quantization of the float graph at ``float_path`` into ``path``:
    QDQ format, per-channel signed weights, unsigned activations whose ranges are
    calibrated on ``feeds`` by ``method`` (``minmax``, ``percentile`` or ``entropy``).
    Returns the nodes kept in float (:func:`kept_in_float`), as ``op -> output``.

    ``reduce_range``: 7-bit weights. x86 CPUs without VNNI multiply uint8 by int8 with
    an instruction that saturates its 16-bit pair sums, so full-range weights give a
    graph whose accuracy depends on the CPU it runs on; 7-bit weights cannot saturate
    there, so the INT8 graph gives the same answer everywhere."""
    import contextlib
    import io
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    check_calibration(method)
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items: Iterator[dict] = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self.items, None)

    # the calibrators report their progress on stdout
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared))
        kept = kept_in_float(prepared)
        quantize_static(str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=list(ops),
                        nodes_to_exclude=kept, calibrate_method=methods[method],
                        reduce_range=reduce_range)
        return describe_nodes(prepared, kept)
