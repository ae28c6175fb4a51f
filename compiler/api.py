"""The public API, mirroring Intel Neural Compressor 3.x: `prepare` -> call with data -> `convert`, or
`quantize` in one call. Models are ONNX paths, ModelProtos, IR graphs, torch `nn.Module`s (with `example_inputs`,
optionally `dynamic_shapes`) or `torch.export.ExportedProgram`s (through `quantir.frontends.torch`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import onnx

from quantir.backends.registry import DEFAULT_BACKEND, get_backend
from quantir.compiler.calibration.data import validate_batch
from quantir.compiler.config.dynamic_config import DynamicQuantConfig
from quantir.compiler.config.expansion import list_fields
from quantir.compiler.config.quant_config import FP8Config, StaticQuantConfig
from quantir.compiler.config.weight_only_config import AWQConfig, GPTQConfig, RTNConfig
from quantir.compiler.model_io import load_graph
from quantir.compiler.pass_manager import Pass, PassContext, PassManager, PrintMode
from quantir.compiler.passes import Annotate, Canonicalize, ComputeQParams, EliminateDeadCode, FoldConstants
from quantir.compiler.passes.calibrate import Calibrator, calibrate_stream, for_specs, observed_values
from quantir.compiler.passes.dynamic_quant import DynamicQuant
from quantir.compiler.passes.fp8_annotate import Fp8Annotate
from quantir.compiler.passes.fp8_qparams import Fp8QParams
from quantir.compiler.passes.smooth_quant import SmoothQuant, select_smoothing_targets, smoothable_inputs
from quantir.compiler.passes.weight_only_awq import WeightOnlyAWQ
from quantir.compiler.passes.weight_only_gptq import WeightOnlyGPTQ, layer_inputs
from quantir.compiler.passes.weight_only_rtn import WeightOnlyRTN
from quantir.compiler.qparams.output_steps import float_output_steps
from quantir.compiler.qparams.scales import Convention
from quantir.compiler.quantized_model import QuantizedModel
from quantir.compiler.recipes import smooth_quant_plan
from quantir.frontends.onnx import import_onnx
from quantir.ir import CalibrationError, ConfigError, Graph, QuantirError
from quantir.ir.clone import clone_graph

__all__ = ["PreparedModel", "convert", "prepare", "quantize"]

QuantConfig = StaticQuantConfig | RTNConfig | FP8Config
"""The configs `prepare`/`convert`/`quantize` take: static int8 (calibrated), weight-only RTN and dynamic int8
(`DynamicQuantConfig`, a StaticQuantConfig subclass), which need no data, and Gaudi FP8 (calibrated maxabs)."""


def _data_free(cfg: object) -> bool:
    """Configs whose conversion reads only the weights: weight-only RTN, dynamic quantization (as in `convert`)."""
    return isinstance(cfg, (RTNConfig, DynamicQuantConfig)) and not isinstance(cfg, (GPTQConfig, AWQConfig))


def _is_static(cfg: object) -> bool:
    return isinstance(cfg, StaticQuantConfig) and not isinstance(cfg, DynamicQuantConfig)


def _check_config(cfg: Any, where: str) -> QuantConfig:
    if not isinstance(cfg, (StaticQuantConfig, RTNConfig, FP8Config)):
        found = type(cfg).__name__
        raise ConfigError(f"{where}: quant_config must be a StaticQuantConfig, an RTNConfig or an FP8Config, got "
                          f"{found}")  # fmt: skip
    if cfg.tunable:
        lists = ", ".join(f"{n}={getattr(cfg, n)!r}" for n in list_fields(cfg, cfg.TUNABLE_FIELDS))
        raise ConfigError(f"{where}: the {type(cfg).__name__} has list-valued fields ({lists}), "
                          "so it stands for several configs: pass it to autotune(), or quantize one of "
                          "config.expand()")  # fmt: skip
    return cfg


def _is_torch(model: Any) -> bool:
    """An nn.Module or an ExportedProgram; torch is never imported for ONNX users (if it is not loaded, the model
    cannot be a torch object)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return isinstance(model, (torch.nn.Module, torch.export.ExportedProgram))


def _load(model: Any, example_inputs: Any = None, dynamic_shapes: Any = None) -> Graph:
    if _is_torch(model):
        if not isinstance(model, sys.modules["torch"].export.ExportedProgram) and example_inputs is None:
            raise ConfigError(
                f"a torch.nn.Module ({type(model).__name__}) needs example_inputs to be exported: "
                "prepare(model, cfg, example_inputs=x) with x a tensor, a tuple or a dict of kwargs"
            )
        from quantir.frontends.torch import import_torch  # with torch models only: ONNX users never load it

        return import_torch(model, example_inputs, dynamic_shapes=dynamic_shapes)
    if isinstance(model, Graph):
        return clone_graph(model)[0]
    if isinstance(model, (str, os.PathLike)):
        return load_graph(model)
    if isinstance(model, onnx.ModelProto):
        return import_onnx(model)
    raise QuantirError(f"cannot quantize a {type(model).__name__}; expected an ONNX path, a ModelProto, an IR Graph, "
                       "a torch.nn.Module or a torch.export.ExportedProgram")  # fmt: skip


class PreparedModel:
    """A canonical float model with calibration statistics. Calling it runs the float model and calibrates on the
    inputs. The statistics do not depend on the config: a min/max of every tensor any config could quantize, so
    `convert(prepared, quant_config)` can apply any fallback set, dtype or scheme without running the model again.
    Statistics only an algorithm needs cost time and memory, so they are collected when prepare's config uses that
    algorithm: histograms of every candidate tensor for act_algo kl/mse/percentile (then any histogram algorithm
    works at convert), and per-channel ranges of MatMul/Gemm inputs for SmoothQuant."""

    def __init__(
        self,
        graph: Graph,
        config: QuantConfig,
        backend: str,
        print_ir_after: PrintMode | None = None,
    ) -> None:
        self.graph = graph
        """The canonical float graph (never annotated: `annotate` works on a copy)."""
        self.config = config
        self.backend = backend
        self.print_ir_after = print_ir_after
        """prepare's `print_ir_after`, which `convert` applies to its own passes too."""
        self._calibrator: Calibrator | None = None
        self._annotated: Graph | None = None
        """prepare's config annotated once (checks the config; calibration reads which values it quantizes)."""
        self.tuning_configs: list[QuantConfig] = []
        """Further configs calibration must serve (autotune's trials): their statistics are collected too."""
        self.kept_batches: list[dict[str, np.ndarray]] = []
        self.keep_samples = 0
        """Calibration batches kept, up to `keep_samples` samples (autotune's sensitivity analysis reads them)."""

    def annotate(self, quant_config: QuantConfig | None = None, *, print_ir: bool = False) -> tuple[Graph, PassContext]:
        """A copy of the float graph annotated for `quant_config` (default: prepare's), and its pass context;
        `print_ir` applies prepare's `print_ir_after`. A weight-only config's annotation is its whole quantization
        (weight types computed, nothing to calibrate)."""
        cfg = self.config if quant_config is None else quant_config
        graph = clone_graph(self.graph)[0]
        ctx = PassContext()
        mode = self.print_ir_after if print_ir else None
        if isinstance(cfg, (GPTQConfig, AWQConfig)):
            raise QuantirError(f"a {type(cfg).__name__} is applied by convert(), after calibration (it needs the "
                               "layers' input statistics)")  # fmt: skip
        step: Pass = (WeightOnlyRTN(config=cfg, backend=self.backend) if isinstance(cfg, RTNConfig)
                      else DynamicQuant(config=cfg, backend=self.backend) if isinstance(cfg, DynamicQuantConfig)
                      else Fp8Annotate(config=cfg) if isinstance(cfg, FP8Config)
                      else Annotate(backend=self.backend, config=cfg))  # fmt: skip
        PassManager([step], print_ir_after=mode).run(graph, ctx)
        return graph, ctx

    @property
    def calibrator(self) -> Calibrator:
        if self._calibrator is None:
            self._calibrator = self._make_calibrator()
        return self._calibrator

    def _make_calibrator(self) -> Calibrator:
        """Observers for what prepare's config and every config of `tuning_configs` can need."""
        configs = [self.config, *self.tuning_configs]
        hessians = layer_inputs(self.graph) if any(isinstance(c, (GPTQConfig, AWQConfig)) for c in configs) else []
        static = [c for c in configs if isinstance(c, StaticQuantConfig) and _is_static(c)]
        if not static and hessians:  # GPTQ/AWQ only: just the layer inputs
            return Calibrator(self.graph, [], hessians=hessians)
        if self._annotated is None:
            self._annotated = self.annotate()[0]
        # Every tensor any config could quantize: configs only narrow what the default config quantizes (fall
        # back, change dtype, scheme or algorithm), so its activations are the candidates.
        default = StaticQuantConfig()
        widest = self._annotated if self.config == default else self.annotate(default)[0]
        candidates = [v.name for v in observed_values(widest)]
        needs = [for_specs(self._annotated), *(for_specs(self.annotate(c)[0]) for c in static if c is not self.config)]
        hist = [n for need in needs for n in need["histograms"]]
        histograms = [*hist, *candidates] if hist else []  # some config uses a histogram algorithm
        smooth = smoothable_inputs(self.graph) if any(smooth_quant_plan(c, self.graph).enabled for c in static) else []
        channels = [*(key for need in needs for key in need["channels"]), *((n, -1) for n in smooth)]
        observe = [*(n for need in needs for n in need["observe"]), *candidates]
        return Calibrator(self.graph, list(dict.fromkeys(observe)), histograms=list(dict.fromkeys(histograms)),
                          channels=list(dict.fromkeys(channels)), required=needs[0]["required"],
                          hessians=hessians)  # fmt: skip

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        item: Any = kwargs if kwargs else (args[0] if len(args) == 1 else tuple(args))
        feed = validate_batch(item, self.graph, self.calibrator.samples)
        self._keep(feed)
        outputs = [self._to_caller(o, item) for o in self.calibrator.observe(feed)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def calibrate(
        self, data: Any, *, sampling_size: int | None = None, progress: bool = True, batch_size: int | None = None
    ) -> PreparedModel:
        """Feed calibration data (any form `quantize` accepts) until `sampling_size` samples; a progress line shows
        on stderr when it is a terminal (`progress=False`: never). An .npz is cut into batches of `batch_size`
        (default: the batch the model fixes, else 32)."""
        size = sampling_size if sampling_size is not None else getattr(self.config, "calibration_sampling_size", 100)
        calibrate_stream(
            self.calibrator, data, self.graph, size, progress=progress, batch_size=batch_size, on_feed=self._keep
        )
        return self

    def _keep(self, feed: dict[str, np.ndarray]) -> None:
        kept = sum(len(next(iter(b.values()))) for b in self.kept_batches if b)
        rows = len(next(iter(feed.values()))) if feed and next(iter(feed.values())).ndim else 1
        if kept < self.keep_samples:
            take = min(rows, self.keep_samples - kept)
            self.kept_batches.append({k: v[:take] if v.ndim and len(v) == rows else v for k, v in feed.items()})

    @staticmethod
    def _to_caller(out: np.ndarray, item: Any) -> Any:
        sample = next(iter(item.values())) if isinstance(item, dict) else (item[0] if isinstance(item, tuple) else item)
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(sample, torch.Tensor):  # torch in, torch out
            return torch.from_numpy(out)
        return out


def prepare(
    model: Any,
    quant_config: QuantConfig | None = None,
    *,
    backend: str = DEFAULT_BACKEND,
    example_inputs: Any = None,
    dynamic_shapes: Any = None,
    print_ir_after: str | None = None,
) -> PreparedModel:
    """Import and canonicalize `model`; returns a callable that calibrates on what it is given.

    A torch `nn.Module` needs `example_inputs` (a tensor, a tuple or a dict of kwargs) and may take
    `dynamic_shapes` (torch.export's; None makes dim 0 of each tensor input dynamic where the model allows it).
    """
    cfg = _check_config(quant_config or StaticQuantConfig(), "prepare")
    backend = get_backend(backend).name  # an unknown backend fails here, before any work
    graph = _load(model, example_inputs, dynamic_shapes)
    mode: PrintMode | None = "all" if print_ir_after == "all" else "change" if print_ir_after == "change" else None
    # INC's FP8 quantizes a Conv2d's own weight, before any BatchNorm after it: the checkpoint keeps both modules
    passes: list[Pass] = [FoldConstants(), Canonicalize(fold_batchnorm=not isinstance(cfg, FP8Config)),
                          EliminateDeadCode()]  # fmt: skip
    PassManager(passes, print_ir_after=mode).run(graph, PassContext())
    prepared = PreparedModel(graph, cfg, backend, print_ir_after=mode)
    if _is_static(cfg):  # checked against the graph here, before calibration (the others check at convert)
        prepared._annotated = prepared.annotate()[0]
    if example_inputs is not None:
        validate_batch(example_inputs, graph)
    return prepared


def convert(prepared: PreparedModel, quant_config: QuantConfig | None = None) -> QuantizedModel:
    """Annotate a copy of the prepared float graph for `quant_config` (default: prepare's) and compute its scales
    from the calibration statistics (a weight-only config needs none); `prepared` is not changed, so it converts
    again with another config."""
    if not isinstance(prepared, PreparedModel):
        raise QuantirError(f"convert() takes the result of prepare(), got {type(prepared).__name__}")
    cfg = prepared.config if quant_config is None else _check_config(quant_config, "convert")
    if isinstance(cfg, (GPTQConfig, AWQConfig)):
        graph, ctx = clone_graph(prepared.graph)[0], PassContext()
        ctx.hessians = prepared.calibrator.hessians()
        ctx.channel_means = prepared.calibrator.channel_means()
        ctx.calibration = prepared.calibrator.stats()
        step: Pass = (WeightOnlyGPTQ(config=cfg, backend=prepared.backend) if isinstance(cfg, GPTQConfig)
                      else WeightOnlyAWQ(config=cfg, backend=prepared.backend))  # fmt: skip
        PassManager([step], print_ir_after=prepared.print_ir_after).run(graph, ctx)
        return QuantizedModel(graph, prepared.backend, cfg, ctx)
    graph, ctx = prepared.annotate(cfg, print_ir=True)
    if isinstance(cfg, FP8Config):
        return _convert_fp8(prepared, cfg, graph, ctx)
    if isinstance(cfg, (RTNConfig, DynamicQuantConfig)):  # nothing to calibrate: annotation computed the weights
        return QuantizedModel(graph, prepared.backend, cfg, ctx)
    calibrator = prepared.calibrator
    ctx.ranges = calibrator.ranges_for(graph, percentile=cfg.percentile)
    ctx.calibration = calibrator.stats()
    name = get_backend(prepared.backend).convention
    passes: list[Pass] = [ComputeQParams(convention=name)]
    smooth = smooth_quant_plan(cfg, prepared.graph)
    if smooth.enabled:
        ctx.smooth_targets = select_smoothing_targets(graph)
        ctx.channel_ranges = calibrator.channel_ranges(ctx.smooth_targets)
        missing = [n for n in ctx.smooth_targets if n not in ctx.channel_ranges]
        if missing:
            raise CalibrationError(
                f"SmoothQuant needs per-channel ranges of {len(missing)} MatMul/Gemm input(s) (first: %{missing[0]}), "
                "which calibration collects only when prepare's config turns SmoothQuant on (smooth_quant=True, or "
                "None on a model with transformer blocks); prepare with it, then convert with any config"
            )
        passes.insert(0, SmoothQuant(alpha=smooth.alpha))
        ctx.recipes.append(f"SmoothQuant alpha={smooth.alpha:g} on {len(ctx.smooth_targets)} activation(s): "
                           f"{smooth.reason}")  # fmt: skip
    else:
        ctx.recipes.append(f"no SmoothQuant: {smooth.reason}")
    PassManager(passes, print_ir_after=prepared.print_ir_after).run(graph, ctx)
    steps = float_output_steps(graph, calibrator.output_ranges(), Convention[name.upper()])
    if steps:
        ctx.calibration["output_steps"] = steps
    return QuantizedModel(graph, prepared.backend, cfg, ctx)


def _convert_fp8(prepared: PreparedModel, cfg: FP8Config, graph: Graph, ctx: PassContext) -> QuantizedModel:
    """FP8: the annotated modules' input ranges from calibration, then INC's scales (fp8-qparams)."""
    calibrator = prepared.calibrator
    ctx.ranges = calibrator.ranges_for(graph)
    ctx.calibration = calibrator.stats()
    outputs = calibrator.output_ranges()
    if cfg.measure_exclude == "NONE":  # module outputs are measured too (where calibration observed them)
        outputs.update({name: obs.range() for name, obs in calibrator.minmax.items() if obs.nbytes})
    PassManager([Fp8QParams(config=cfg, output_ranges=outputs)], print_ir_after=prepared.print_ir_after).run(graph, ctx)
    return QuantizedModel(graph, prepared.backend, cfg, ctx)


def quantize(
    model: Any,
    quant_config: QuantConfig | None = None,
    calib_data: Iterable[Any] | str | os.PathLike[str] | None = None,
    *,
    run_fn: Callable[[PreparedModel], Any] | None = None,
    backend: str = DEFAULT_BACKEND,
    example_inputs: Any = None,
    dynamic_shapes: Any = None,
) -> QuantizedModel:
    """prepare -> calibrate (on `calib_data`, or by `run_fn(prepared)`) -> convert, in one call. `example_inputs`
    and `dynamic_shapes` are for torch modules, as in `prepare`."""
    prepared = prepare(model, quant_config, backend=backend, example_inputs=example_inputs,
                       dynamic_shapes=dynamic_shapes)  # fmt: skip
    if _data_free(prepared.config):
        return convert(prepared)  # RTN and dynamic quantization read only the weights: no calibration data needed
    if run_fn is not None:
        run_fn(prepared)
    elif calib_data is not None:
        prepared.calibrate(calib_data)
    else:
        raise QuantirError("quantize() needs calib_data or run_fn to calibrate with")
    return convert(prepared)
