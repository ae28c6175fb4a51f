"""The public API, mirroring Intel Neural Compressor 3.x: `prepare` -> call with data -> `convert`, or
`quantize` in one call. Models are ONNX paths or ModelProtos (torch modules come with the torch frontend).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from quantir.compiler.calib_data import feeds, validate_batch
from quantir.compiler.config import StaticQuantConfig
from quantir.compiler.model_io import load_graph
from quantir.compiler.pass_manager import Pass, PassContext, PassManager, PrintMode
from quantir.compiler.passes import Annotate, Canonicalize, ComputeQParams, EliminateDeadCode, FoldConstants
from quantir.compiler.passes.calibrate import RANGES_KEY, Calibrator
from quantir.compiler.passes.smooth_quant import CHANNEL_RANGES_KEY, TARGETS_KEY, SmoothQuant, select_smoothing_targets
from quantir.compiler.quantized_model import QuantizedModel
from quantir.compiler.targets import target
from quantir.frontends.onnx import import_onnx
from quantir.ir import ConfigError, Graph, QuantirError
from quantir.ir.clone import clone_graph

__all__ = ["PreparedModel", "convert", "prepare", "quantize"]


def _load(model: Any) -> Graph:
    if isinstance(model, Graph):
        return clone_graph(model)[0]
    if isinstance(model, (str, os.PathLike)):
        return load_graph(model)
    if type(model).__name__ == "ModelProto":
        return import_onnx(model)
    if hasattr(model, "forward") and hasattr(model, "state_dict"):
        raise QuantirError("torch.nn.Module input needs the torch frontend, which is not available yet; export the "
                           "model to ONNX (torch.onnx.export(..., dynamo=True)) and pass the .onnx path")  # fmt: skip
    raise QuantirError(f"cannot quantize a {type(model).__name__}; expected an ONNX path, a ModelProto or an IR Graph")


class PreparedModel:
    """A model annotated for quantization. Calling it runs the float model and calibrates on the inputs."""

    def __init__(self, graph: Graph, config: StaticQuantConfig, backend: str, ctx: PassContext) -> None:
        self.graph = graph
        self.config = config
        self.backend = backend
        self.ctx = ctx
        self._calibrator: Calibrator | None = None

    @property
    def calibrator(self) -> Calibrator:
        if self._calibrator is None:
            targets = self.ctx.data.get(TARGETS_KEY, {})
            assert isinstance(targets, dict)
            self._calibrator = Calibrator(self.graph, percentile=self.config.percentile, per_channel=list(targets))
        return self._calibrator

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        item: Any = kwargs if kwargs else (args[0] if len(args) == 1 else tuple(args))
        feed = validate_batch(item, self.graph, self.calibrator.samples)
        outputs = [self._to_caller(o, item) for o in self.calibrator.observe(feed)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def calibrate(self, data: Any, *, sampling_size: int | None = None) -> PreparedModel:
        """Feed calibration data (any form `quantize` accepts) until `sampling_size` samples."""
        size = sampling_size if sampling_size is not None else self.config.calibration_sampling_size
        for feed in feeds(data, self.graph, sampling_size=size):
            self.calibrator.observe(feed)
        return self

    @staticmethod
    def _to_caller(out: np.ndarray, item: Any) -> Any:
        sample = next(iter(item.values())) if isinstance(item, dict) else (item[0] if isinstance(item, tuple) else item)
        if hasattr(sample, "detach"):  # torch in, torch out
            import torch

            return torch.from_numpy(out)
        return out


def prepare(
    model: Any,
    quant_config: StaticQuantConfig | None = None,
    *,
    backend: str = "onnx_qdq",
    example_inputs: Any = None,
    print_ir_after: str | None = None,
) -> PreparedModel:
    """Import, canonicalize and annotate `model`; returns a callable that calibrates on what it is given."""
    cfg = quant_config or StaticQuantConfig()
    if not isinstance(cfg, StaticQuantConfig):
        raise ConfigError(f"quant_config must be a StaticQuantConfig, got {type(cfg).__name__}")
    target(backend)  # an unknown backend fails here, before any work
    graph = _load(model)
    ctx = PassContext()
    mode: PrintMode | None = "all" if print_ir_after == "all" else "change" if print_ir_after == "change" else None
    passes: list[Pass] = [Canonicalize(), FoldConstants(), EliminateDeadCode(), Annotate(backend=backend, config=cfg)]
    PassManager(passes, print_ir_after=mode).run(graph, ctx)
    if cfg.smooth_quant:
        ctx.data[TARGETS_KEY] = select_smoothing_targets(graph)
    prepared = PreparedModel(graph, cfg, backend, ctx)
    if example_inputs is not None:
        validate_batch(example_inputs, graph)
    return prepared


def convert(prepared: PreparedModel) -> QuantizedModel:
    """Compute scales from what the prepared model observed; returns the callable, savable quantized model."""
    if not isinstance(prepared, PreparedModel):
        raise QuantirError(f"convert() takes the result of prepare(), got {type(prepared).__name__}")
    ctx = prepared.ctx
    ctx.data[RANGES_KEY] = prepared.calibrator.ranges()
    ctx.data["calibration"] = prepared.calibrator.stats()
    caps = target(prepared.backend)
    passes: list[Pass] = [ComputeQParams(convention=caps.convention.name.lower())]
    if prepared.config.smooth_quant:
        ctx.data[CHANNEL_RANGES_KEY] = prepared.calibrator.channel_ranges()
        passes.insert(0, SmoothQuant(alpha=prepared.config.smooth_quant_alpha))
    PassManager(passes).run(prepared.graph, ctx)
    return QuantizedModel(prepared.graph, prepared.backend, prepared.config, ctx)


def quantize(
    model: Any,
    quant_config: StaticQuantConfig | None = None,
    calib_data: Iterable[Any] | str | os.PathLike[str] | None = None,
    *,
    run_fn: Callable[[PreparedModel], Any] | None = None,
    backend: str = "onnx_qdq",
) -> QuantizedModel:
    """prepare -> calibrate (on `calib_data`, or by `run_fn(prepared)`) -> convert, in one call."""
    prepared = prepare(model, quant_config, backend=backend)
    if run_fn is not None:
        run_fn(prepared)
    elif calib_data is not None:
        prepared.calibrate(calib_data)
    else:
        raise QuantirError("quantize() needs calib_data or run_fn to calibrate with")
    return convert(prepared)
