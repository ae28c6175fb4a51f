"""`quantir convert`: quantize a model for a target and print what was decided and measured.

A model that already contains QuantizeLinear/DequantizeLinear (e.g. from onnxruntime's quantize_static) is
retargeted instead: no calibration, the source's scales, and a note wherever the target's rules differ (with
`--requantize-weights` to requantize the weights for the target).

Prints the per-reason summary of ops quantized vs float, the int8 kernel coverage the runtime really achieved,
and the agreement of the artifact's outputs with the float model's on the calibration data.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from quantir.backends.contract import HEAVY_OPS, VerifyReport
from quantir.backends.onnx_proto import ort_session
from quantir.backends.onnx_proto.artifact import read_manifest
from quantir.backends.probe import ProbeWorker, probe
from quantir.backends.registry import backend_names, get_backend
from quantir.compiler.api import convert, prepare
from quantir.compiler.calibration.data import feeds
from quantir.compiler.config.dynamic_config import DynamicQuantConfig
from quantir.compiler.config.quant_config import FP8Config, StaticQuantConfig, load_config
from quantir.compiler.config.weight_only_config import AWQConfig, GPTQConfig, RTNConfig
from quantir.compiler.passes.calibrate import budget_batch
from quantir.compiler.quantized_model import QuantizedModel
from quantir.ir import QuantirError

__all__ = [
    "COLLAPSED_DB", "QUALITY_FLOOR", "agreement", "mean_cosine", "run_convert", "run_retarget", "summarize",
    "verify_fresh",
]  # fmt: skip


def summarize(model: QuantizedModel) -> str:
    rows = model.decisions()
    lines = [f"recipe: {r}" for r in model.ctx.recipes]
    lines.append(f"ops: {sum(d.quantized for d in rows)} quantized, {sum(not d.quantized for d in rows)} float")
    cfg = model.config
    low = "wonly" if isinstance(cfg, RTNConfig) else "fp8  " if isinstance(cfg, FP8Config) else "int8 "
    for (quantized, reason), n in Counter((d.quantized, d.reason) for d in rows).most_common():
        lines.append(f"  {low if quantized else 'float'}  {n:4d}  {reason}")
    return "\n".join(lines)


QUALITY_FLOOR = 0.9
"""Below this mean cosine (per sample, float vs quantized) on any output, `convert` calls the model collapsed."""
COLLAPSED_DB = 10.0
"""A layer whose SQNR is below this many dB is where a collapse starts."""


def mean_cosine(f: np.ndarray, q: np.ndarray) -> float:
    """Mean over samples (dim 0) of the cosine between the float and quantized outputs."""
    f64, q64 = f.astype(np.float64).reshape(len(f), -1), q.astype(np.float64).reshape(len(q), -1)
    norms = np.maximum(np.linalg.norm(f64, axis=1) * np.linalg.norm(q64, axis=1), 1e-30)
    return float(np.mean(np.sum(f64 * q64, 1) / norms))


def agreement(float_outputs: list[np.ndarray], quant_outputs: list[np.ndarray], names: list[str]) -> list[str]:
    """Per output: max |diff|, relative L2 error, cosine, and argmax agreement for 2-D outputs."""
    lines = []
    for name, f, q in zip(names, float_outputs, quant_outputs, strict=True):
        f64, q64 = f.astype(np.float64).reshape(len(f), -1), q.astype(np.float64).reshape(len(q), -1)
        rel = float(np.linalg.norm(f64 - q64)) / max(float(np.linalg.norm(f64)), 1e-30)
        cos = mean_cosine(f, q)
        text = (
            f"  {name}: max |diff| {float(np.max(np.abs(f64 - q64))):.4g}, relative L2 {rel:.4%}, mean cosine {cos:.5f}"
        )
        if f.ndim == 2 and f.shape[1] > 1:
            text += f", argmax agreement {float(np.mean(f.argmax(1) == q.argmax(1))):.2%}"
        lines.append(text)
    return lines


def verify_fresh(
    target: str, artifact: Path, feed: dict[str, np.ndarray], worker: ProbeWorker | None = None
) -> VerifyReport:
    """Verify an artifact just written: run it once in a child process first (`worker`, else a child of its own), so
    that a runtime crash is a `RuntimeCrashError` and not a dead process."""
    backend = get_backend(target)
    if worker is None:
        probe(backend, artifact, feed)
    else:
        worker.run(backend, artifact, feed)
    return backend.verify(artifact, feed)


@contextmanager
def _probe_worker(args: argparse.Namespace, targets: list[str]) -> Iterator[ProbeWorker]:
    """The worker the CLI started first (`args.probe_worker`), else one of our own; the targets' loaders are
    imported in it now, while this process converts."""
    given = getattr(args, "probe_worker", None)
    worker = given if isinstance(given, ProbeWorker) else ProbeWorker()
    try:
        for t in targets:
            worker.preload(get_backend(t))
        yield worker
    finally:
        if worker is not given:
            worker.close()


def _print_runtime_notes(report: VerifyReport) -> None:
    """The emitter's notes and the quantized Conv/MatMul/Gemm the runtime did not run in int8, by name."""
    for note in report.notes:
        print(f"  note: {note}")
    lost = [r.name for r in report.missed if r.op_type in HEAVY_OPS]
    if lost:
        more = f" (and {len(lost) - 5} more)" if len(lost) > 5 else ""
        print(f"  warning: {len(lost)} quantized Conv/MatMul/Gemm run float in {report.runtime}: "
              f"{', '.join(lost[:5])}{more}")  # fmt: skip


def _save_all(out: Path, targets: list[str], save: Callable[[Path, str], Path]) -> tuple[list[Path], Path | None]:
    """`save(folder, target)` for each target: into `out` for one, into `out/<target>` for several. Returns the
    artifact folders and `out` when this call created it (so a failure can remove it again)."""
    if len(targets) == 1:
        return [save(out, targets[0])], None
    created = None if out.exists() else out
    out.mkdir(parents=True, exist_ok=True)
    return [save(out / t, t) for t in targets], created


@contextmanager
def _removed_on_failure(written: list[Path], created: Path | None) -> Iterator[None]:
    """A check of the written artifacts that fails (a runtime crash, the quality gate) leaves nothing behind."""
    try:
        yield
    except QuantirError:
        for path in written:
            shutil.rmtree(path, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def _batches(data: Any, model: QuantizedModel, size: int, batch: int | None) -> Iterator[dict[str, np.ndarray]]:
    """The calibration data again, for the checks: in `--batch-size` batches, else in batches whose tensors fit the
    budget calibration measured (a detector's batch of 32 would take gigabytes in three sessions at once)."""
    if batch is None:
        batch = budget_batch(model.ctx.calibration)
    yield from feeds(data, model.ir, sampling_size=size, batch_size=batch)


def _float_session(source: Path) -> Any:
    """An ORT session of the float model (a .qir is emitted to a temporary file, removed once loaded)."""
    import tempfile

    from quantir.compiler.model_io import export_onnx, load_graph

    if source.suffix == ".onnx":
        return ort_session(source)
    with tempfile.TemporaryDirectory(prefix="quantir-float-") as tmp:
        path = Path(tmp) / "float.onnx"
        export_onnx(load_graph(source), path)
        return ort_session(path)


def _has_qdq(model: str) -> bool:
    """Whether `model` is an ONNX file that already contains QuantizeLinear/DequantizeLinear nodes."""
    if Path(model).suffix != ".onnx" or not Path(model).is_file():
        return False  # the float path reports a missing model
    from quantir.frontends.onnx.importer import load_model_proto

    proto = load_model_proto(model)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)


def _probe_feed(model: QuantizedModel) -> dict[str, np.ndarray]:
    """A batch of one for models converted without calibration data (kernel coverage needs only shapes)."""
    from quantir.ir import TensorType

    feed = {}
    rng = np.random.default_rng(0)
    for v in model.ir.inputs:
        assert isinstance(v.type, TensorType) and v.type.shape is not None and v.dtype is not None
        shape = tuple(d if isinstance(d, int) else 1 for d in v.type.shape)
        feed[v.name] = rng.random(shape).astype(v.dtype.storage)
    return feed


def run_retarget(args: argparse.Namespace, targets: list[str], worker: ProbeWorker | None = None) -> int:
    """Convert an already-quantized (QDQ) model: no calibration; print where each target's rules differ from the
    source's and, with `--requantize-weights`, requantize the weights for the target."""
    from quantir.compiler.retarget import from_quantized, requantize, target_differences
    from quantir.frontends.onnx import import_onnx
    from quantir.ir.clone import clone_graph

    t0 = time.perf_counter()
    left: list[str] = []
    source = import_onnx(args.model, qdq_left=left)  # inconsistent Q/DQ parameters fail here, before any write
    for line in left:
        print(f"kept as an op (its value stays float): {line}")
    fix = bool(getattr(args, "requantize_weights", False))
    models: list[QuantizedModel] = []
    for t in targets:
        graph = clone_graph(source)[0]
        diffs = target_differences(graph, t)
        if diffs:
            print(f"{t}: where {get_backend(t).runtime}'s int8 rules differ from the source model's:")
            for line in diffs:
                print(f"  {line}")
            if fix:
                for line in requantize(graph, t):
                    print(f"  requantized {line}")
            elif requantize(clone_graph(graph)[0], t):  # offered only where it changes something
                print(f"  to requantize the weights for {t} (activations keep the source's scales), rerun with "
                      "--requantize-weights")  # fmt: skip
        models.append(from_quantized(graph, t, source=f"Q/DQ parameters of {args.model}"))
    by_target = dict(zip(targets, models, strict=True))
    written, created = _save_all(Path(args.output), targets, lambda path, t: by_target[t].save(path, backend=t))
    print(f"retargeted {args.model} (already quantized: no calibration) in {time.perf_counter() - t0:.2f} s")
    with _removed_on_failure(written, created):
        for t, m, path in zip(targets, models, written, strict=True):
            print(summarize(m))
            for note in m.ctx.notes:
                print(f"  note: {note}")
            size = args.sampling_size or 100
            feed = next(_batches(args.calib, m, size, args.batch_size)) if args.calib else _probe_feed(m)
            report = verify_fresh(t, path, feed, worker)
            print(f"{t}: {path}")
            print(f"  int8 kernel coverage: {report.coverage_text()}")
            _print_runtime_notes(report)
            if args.calib:
                sess = _float_session(Path(args.model))
                names = [o.name for o in sess.get_outputs()]
                src_out = [sess.run(None, b) for b in _batches(args.calib, m, size, args.batch_size)]
                got = [report.run(b) for b in _batches(args.calib, m, size, args.batch_size)]
                print("  agreement with the source QDQ model (ONNX Runtime) on the calibration data:")
                merged = [np.concatenate([o[i] for o in src_out]) for i in range(len(names))]
                mine = [np.concatenate([o[i] for o in got]) for i in range(len(names))]
                for line in agreement(merged, mine, names):
                    print("  " + line)
    return 0


def run_convert(args: argparse.Namespace) -> int:
    known = backend_names()
    if args.to == "all":  # a backend that holds FP8 only is a target of FP8 configs only
        fp8 = bool(args.config) and isinstance(load_config(args.config), FP8Config)
        targets = [n for n in known if fp8 or not get_backend(n).fp8_only]
    else:
        try:
            targets = [get_backend(args.to).name]
        except QuantirError:
            spelled = ", ".join(n.replace("_", "-") for n in known)
            raise QuantirError(f"--to {args.to}: unknown target; expected {spelled} or all") from None
    with _probe_worker(args, targets) as worker:  # its child starts now, while this process converts
        if _has_qdq(args.model):
            return run_retarget(args, targets, worker)
        return _convert_float(args, targets, worker)


def _artifact_mb(target: str, path: Path) -> float:
    """The artifact's size on disk without the fake-quant reference model some backends write beside it."""
    reference = get_backend(target).reference_model(path)
    model = Path(str((read_manifest(path) or {}).get("model", "")))
    skip = reference if reference is not None and reference.name != model.name else None
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file() and f != skip) / 1e6


def _convert_float(args: argparse.Namespace, targets: list[str], worker: ProbeWorker) -> int:
    cfg = load_config(args.config) if args.config else StaticQuantConfig()
    weight_only = isinstance(cfg, RTNConfig)
    data_free = (weight_only or isinstance(cfg, DynamicQuantConfig)) and not isinstance(cfg, (GPTQConfig, AWQConfig))
    if not args.calib and not data_free:
        raise QuantirError(
            f"{args.model} is a float model: quantizing it needs calibration data (--calib FILE.npz); only a model "
            "that already contains QuantizeLinear/DequantizeLinear, or a weight-only RTN config, converts without it"
        )
    if getattr(args, "requantize_weights", False):
        raise QuantirError("--requantize-weights applies to an already-quantized (QDQ) model only")
    size = args.sampling_size or getattr(cfg, "calibration_sampling_size", 100)
    t0 = time.perf_counter()
    mode = "all" if args.print_ir_after_all else "change" if args.print_ir_after_change else None
    prepared = prepare(args.model, cfg, backend=targets[0], print_ir_after=mode)
    if not data_free:
        prepared.calibrate(args.calib, sampling_size=size, batch_size=args.batch_size)
    model = convert(prepared)
    written, created = _save_all(Path(args.output), targets, lambda path, t: model.save(path, backend=t))
    seconds = time.perf_counter() - t0
    stats = model.ctx.calibration
    used = f"{stats.get('samples', 0)} calibration samples"
    if data_free:
        used = "weight-only RTN: no calibration" if weight_only else "dynamic quantization: no calibration"
    print(f"converted {args.model} in {seconds:.2f} s ({used})")
    print(summarize(model))
    with _removed_on_failure(written, created):
        for t, path in zip(targets, written, strict=True):
            feed = next(_batches(args.calib, model, size, args.batch_size)) if args.calib else _probe_feed(model)
            report = verify_fresh(t, path, feed, worker)
            print(f"{t}: {path}")
            kind = "low-bit kernel" if weight_only else "FP8 module" if isinstance(cfg, FP8Config) else "int8 kernel"
            print(f"  {kind} coverage: {report.coverage_text()}")
            _print_runtime_notes(report)
            if data_free and Path(args.model).is_file():
                source = Path(args.model).stat().st_size / 1e6
                print(f"  artifact {_artifact_mb(t, path):.1f} MB on disk (the float model: {source:.1f} MB)")
            if not args.calib:
                print("  agreement with the float model: not measured (no --calib data)")
                continue
            sess = _float_session(Path(args.model))
            names = [o.name for o in sess.get_outputs()]
            fl: list[list[np.ndarray]] = [[] for _ in names]
            qu: list[list[np.ndarray]] = [[] for _ in names]
            for batch in _batches(args.calib, model, size, args.batch_size):
                for i, (f, q) in enumerate(zip(sess.run(None, batch), report.run(batch), strict=True)):
                    fl[i].append(f)
                    qu[i].append(q)
            merged_f, merged_q = [np.concatenate(x) for x in fl], [np.concatenate(x) for x in qu]
            print("  agreement with the float model on the calibration data:")
            for line in agreement(merged_f, merged_q, names):
                print("  " + line)
            collapsed = [(n, c) for n, f, q in zip(names, merged_f, merged_q, strict=True)
                         if (c := mean_cosine(f, q)) < QUALITY_FLOOR]  # fmt: skip
            if collapsed:
                problem = _collapse(model, t, collapsed, lambda: _batches(args.calib, model, size, args.batch_size))
                if not getattr(args, "accept_low_accuracy", False):
                    raise QuantirError(f"{problem}; the artifacts were removed. To keep them anyway, rerun with "
                                       "--accept-low-accuracy")  # fmt: skip
                print(f"  WARNING (accepted with --accept-low-accuracy): {problem}")
    return 0


def _collapse(model: QuantizedModel, target: str, collapsed: list[tuple[str, float]],
              batches: Callable[[], Iterator[dict[str, np.ndarray]]]) -> str:  # fmt: skip
    """Why the quantized model is unusable: the collapsed outputs and the first layer (in graph order) whose SQNR
    against the float model is below `COLLAPSED_DB`, with the fallback to try."""
    from quantir.compiler.layer_error import layer_errors

    outputs = ", ".join(f"{n!r} (mean cosine {c:.3f})" for n, c in collapsed)
    text = f"the {target} model collapsed: its output {outputs} is below {QUALITY_FLOOR} against the float model"
    report = layer_errors(model.legalized(target).graph, batches())
    bad = sorted((r for r in report.rows if r.sqnr_db < COLLAPSED_DB), key=lambda r: r.position)
    if not bad:
        return f"{text}; no single layer is below {COLLAPSED_DB:g} dB SQNR (the error accumulates: see quantir layers)"
    first = bad[0]
    return (f"{text}; the first layer below {COLLAPSED_DB:g} dB SQNR is {first.producer} (tensor {first.value!r}, "
            f"{first.sqnr_db:.1f} dB). Keep it float with set_local (a --config file: `local: {{NAME: {{act_dtype: "
            "fp32, w_dtype: fp32}}`), or see every layer with `quantir layers`")  # fmt: skip
