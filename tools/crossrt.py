"""Cross-runtime agreement: run two artifacts saved from the same quantized IR (e.g. by `quantir convert --to all`:
the ONNX QDQ artifact in ONNX Runtime and the OpenVINO artifact in OpenVINO), each loaded by its backend from the
registry, on the same inputs and report, per output, the largest disagreement in units of the output's quantization
step (LSB). The first backend in registry order is side A.

The output step (the "LSB") is defined as follows:

- a quantized output: its own quantization scale, as recorded in `quantir.json` (`outputs`; the smallest scale
  when per channel);
- a float output (e.g. logits from a quantized Gemm that quantir leaves unquantized because only float code reads
  them): the step its own activation quantizer would give it, recorded at calibration in `quantir.json`
  (`calibration.output_steps`: the producing op's activation dtype, scheme and integer range, per tensor, minmax
  over the output's calibrated range; `compiler/output_steps.py`). This is the step the output would carry had it
  been quantized like every other activation (as ORT's tool quantizes Gemm outputs);
- a float output with no recorded step (a model imported already quantized, never calibrated by quantir): the
  quantization step of the activation that feeds the op producing the output, i.e. the scale of the
  DequantizeLinear on that op's non-constant input in the ONNX QDQ artifact (the smallest when there are several).

The second, stricter figure is also reported for every float output that has it (`input_step`): a disagreement below
it means the two runtimes computed the float tail from (nearly) the same codes. Outputs with neither get no LSB
figure (only max |diff|).

Argmax agreement and the smallest row-wise cosine similarity are reported for 2-D outputs (logits, embeddings:
a sentence embedding after normalization has no quantization step, so the cosine is its measure). As a
diagnostic, the OpenVINO artifact's own fake-quant reference (`model.qdq.onnx`, the graph OpenVINO converted) is
also run in ONNX Runtime: its distance to OpenVINO isolates the runtimes' integer arithmetic from differences
between the two backends' legalized graphs.

"The same IR": the two backends legalize their own copy of the IR, so the manifests' `ir_sha256` (a hash of the
legalized graph) legitimately differ. The artifacts are accepted when the hashes are equal, or when their
`config` and `calibration` records are equal and every tensor quantized in both QDQ graphs has identical scale and
zero point (quantir names Q/DQ parameters `<tensor>_scale` / `<tensor>_zero_point`); otherwise `cross_runtime`
refuses with a `SerializationError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quantir.backends.contract import Backend
from quantir.backends.registry import backend_names, get_backend
from quantir.ir import SerializationError

__all__ = [
    "CrossRow", "CrossRuntimeReport", "artifacts", "compare_artifacts", "cross_runtime", "cross_runtime_all",
    "reference_model",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class CrossRow:
    """ORT vs OpenVINO for one output."""

    name: str
    max_abs: float
    step: float | None
    """The output's LSB (see the module docstring); None when neither rule gives one."""
    step_kind: str
    """"output scale", "calibrated output step", "input activation scale of <node>", or "none"."""
    argmax: float | None
    """Share of rows whose argmax agrees (2-D outputs only)."""
    same_graph_max_abs: float
    """max |ORT(OpenVINO's model.qdq.onnx) - OpenVINO|: the runtimes alone, same graph."""
    input_step: float | None = None
    """A float output's producer's input activation scale (the stricter unit; see the module docstring)."""
    min_cosine: float | None = None
    """Smallest cosine similarity between the two runtimes' rows (2-D outputs: embeddings, logits)."""

    @property
    def lsb(self) -> float | None:
        return None if self.step is None else self.max_abs / self.step

    @property
    def same_graph_lsb(self) -> float | None:
        return None if self.step is None else self.same_graph_max_abs / self.step

    @property
    def input_lsb(self) -> float | None:
        return None if self.input_step is None else self.max_abs / self.input_step


@dataclass(slots=True)
class CrossRuntimeReport:
    """Per-output disagreement of two runtimes on one quantized IR (artifact `a` is the reference side)."""

    a: Path
    b: Path
    runtime_a: str
    runtime_b: str
    identity: str
    """How the two artifacts were recognised as the same IR."""
    samples: int
    rows: list[CrossRow] = field(default_factory=list)

    def ok(self, max_lsb: float = 1.0) -> bool:
        """Every output with an LSB agrees within `max_lsb` steps."""
        return all(r.lsb is None or r.lsb <= max_lsb for r in self.rows)

    @property
    def max_lsb(self) -> float | None:
        values = [r.lsb for r in self.rows if r.lsb is not None]
        return max(values) if values else None

    def format(self) -> str:
        head = f"{self.runtime_a} ({self.a}) vs {self.runtime_b} ({self.b}) on {self.samples} samples"
        lines = [f"{head}; {self.identity}",
                 "| output | max abs diff | LSB step (kind) | diff in LSB | argmax agree | min row cosine "
                 "| same-graph diff in LSB | diff in input-activation steps |",
                 "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in self.rows:
            step = "-" if r.step is None else f"{r.step:.4g} ({r.step_kind})"
            lsb = "-" if r.lsb is None else f"{r.lsb:.3f}"
            same = "-" if r.same_graph_lsb is None else f"{r.same_graph_lsb:.3f}"
            arg = "-" if r.argmax is None else f"{r.argmax:.2%}"
            inp = "-" if r.input_lsb is None else f"{r.input_lsb:.3f} (step {r.input_step:.4g})"
            cos = "-" if r.min_cosine is None else f"{r.min_cosine:.6f}"
            lines.append(f"| {r.name} | {r.max_abs:.4g} | {step} | {lsb} | {arg} | {cos} | {same} | {inp} |")
        return "\n".join(lines)


def artifacts(path: str | os.PathLike[str]) -> list[tuple[Backend, Path]]:
    """(backend, artifact) of every backend (at least two) in a `convert --to all` folder, or in one artifact's
    parent folder when `path` is an artifact (its siblings are looked up next to it); backends in registry order."""
    from quantir.backends.onnx_proto.artifact import read_manifest

    root = Path(path)
    if read_manifest(root) is not None:
        root = root.parent
    found: dict[str, Path] = {}
    if root.is_dir():
        for child in sorted(root.iterdir()):
            m = read_manifest(child) if child.is_dir() else None
            if m is not None and m.get("backend") in backend_names():
                found.setdefault(str(m["backend"]), child)
    names = [n for n in backend_names() if n in found]
    if len(names) < 2:
        missing = [n for n in backend_names() if n not in found]
        raise SerializationError(
            f"{os.fspath(path)!r} does not hold quantir artifacts of two backends (found: "
            f"{', '.join(names) or 'none'}; missing: {', '.join(missing)}); write them with "
            "`quantir convert MODEL --to all -o DIR`"
        )
    return [(get_backend(n), found[n]) for n in names]


def _qparams(model_path: Path) -> dict[str, tuple[Any, Any]]:
    """Tensor -> (scale, zero point) of every `<tensor>_scale` initializer of a quantir QDQ graph."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(os.fspath(model_path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer if not i.external_data}
    out: dict[str, tuple[Any, Any]] = {}
    for name, init in inits.items():
        if name.endswith("_scale"):
            base = name[: -len("_scale")]
            zp = inits.get(f"{base}_zero_point")
            out[base] = (numpy_helper.to_array(init), None if zp is None else numpy_helper.to_array(zp))
    return out


def _identity(qdq: Path, ov_dir: Path, mq: dict[str, Any], mo: dict[str, Any], ref_a: Path, ref_b: Path) -> str:
    if mq.get("ir_sha256") and mq.get("ir_sha256") == mo.get("ir_sha256"):
        return f"same ir_sha256 {str(mq['ir_sha256'])[:12]}"
    for key in ("config", "calibration"):
        if mq.get(key) != mo.get(key):
            raise SerializationError(
                f"{os.fspath(qdq)!r} and {os.fspath(ov_dir)!r} were not saved from the same quantized IR: their "
                f"{key!r} records differ; save both from one QuantizedModel (`quantir convert --to all`)"
            )
    a = _qparams(ref_a)
    b = _qparams(ref_b)
    shared = sorted(set(a) & set(b))
    differ = [
        t for t in shared
        if a[t][0].shape != b[t][0].shape or not np.array_equal(a[t][0], b[t][0])
        or (a[t][1] is None) != (b[t][1] is None) or (a[t][1] is not None and not np.array_equal(a[t][1], b[t][1]))
    ]  # fmt: skip
    if differ or not shared:
        what = f"quantization of {', '.join(differ[:5])} differs" if differ else "no quantized tensor in common"
        raise SerializationError(
            f"{os.fspath(qdq)!r} and {os.fspath(ov_dir)!r} were not saved from the same quantized IR ({what}); "
            "save both from one QuantizedModel (`quantir convert --to all`)"
        )
    return f"same config, calibration and quantization of {len(shared)} shared tensors (legalized hashes differ)"


def _float_output_steps(model_path: Path) -> dict[str, tuple[float, str]]:
    """Float output -> (step of the quantized activation feeding its producer, description)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(os.fspath(model_path), load_external_data=False)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    steps: dict[str, tuple[float, str]] = {}
    for out in g.output:
        node = producer.get(out.name)
        if node is None or node.op_type in ("DequantizeLinear", "QuantizeLinear"):
            continue
        found: list[float] = []
        for inp in node.input:
            dq = producer.get(inp)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
                continue  # a weight (constant) or a float input
            if dq.input[1] in inits:
                found.append(float(np.min(numpy_helper.to_array(inits[dq.input[1]]))))
        if found:
            steps[out.name] = (min(found), f"input activation scale of {node.name or node.op_type}")
    return steps


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    cos = np.where(norms > 0, np.sum(a64 * b64, axis=1) / np.where(norms > 0, norms, 1.0), 1.0)
    return float(np.min(cos, initial=1.0))


def _ort_run(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from quantir.backends.onnx_proto import ort_session, run_all

    return run_all(ort_session(path), inputs)


def reference_model(backend: Backend, artifact: Path) -> Path:
    ref = backend.reference_model(artifact)
    if ref is None or not ref.is_file():
        raise SerializationError(
            f"{os.fspath(artifact)!r} ({backend.name}) has no QDQ reference model of its legalized graph; "
            "cross-runtime comparison needs one on both sides"
        )
    return ref


def cross_runtime(path: str | os.PathLike[str], inputs: dict[str, np.ndarray]) -> CrossRuntimeReport:
    """Run two artifacts of one quantized IR (e.g. the onnx_qdq artifact in ORT with fused integer kernels and the
    openvino one on OpenVINO's CPU plugin) on `inputs`, each in its own runtime, and report per output the max
    |A - B| in LSB (see the module docstring).

    `path` is a `convert --to all` folder or one artifact inside one. Raises `SerializationError` when two artifacts
    are missing or were not saved from the same IR.
    """
    (backend_a, a_dir), (backend_b, b_dir) = artifacts(path)[:2]
    return compare_artifacts((backend_a, a_dir), (backend_b, b_dir), inputs)


def cross_runtime_all(path: str | os.PathLike[str], inputs: dict[str, np.ndarray]) -> list[CrossRuntimeReport]:
    """The first artifact of `path` (registry order: onnx_qdq when present) against every other one in it, each
    in its own runtime: what `quantir compare` prints for a `convert --to all` folder."""
    found = artifacts(path)
    return [compare_artifacts(found[0], other, inputs) for other in found[1:]]


def compare_artifacts(a: tuple[Backend, Path], b: tuple[Backend, Path], inputs: dict[str, np.ndarray]
                      ) -> CrossRuntimeReport:  # fmt: skip
    """Artifact `a` against artifact `b` of the same IR (see the module docstring)."""
    from quantir.backends.onnx_proto.artifact import read_manifest

    (backend_a, a_dir), (backend_b, b_dir) = a, b
    ma, mb = read_manifest(a_dir) or {}, read_manifest(b_dir) or {}
    ref_a, ref_b = reference_model(backend_a, a_dir), reference_model(backend_b, b_dir)
    identity = _identity(a_dir, b_dir, ma, mb, ref_a, ref_b)
    runner_a, runner_b = backend_a.load(a_dir), backend_b.load(b_dir)
    a_out = dict(zip(runner_a.output_names, runner_a(inputs), strict=True))
    b_out = dict(zip(runner_b.output_names, runner_b(inputs), strict=True))
    same_graph = _ort_run(ref_b, inputs)
    float_steps = _float_output_steps(ref_a)
    samples = len(next(iter(inputs.values()))) if inputs else 0
    report = CrossRuntimeReport(a_dir, b_dir, backend_a.runtime, backend_b.runtime, identity, samples)
    for name, x in a_out.items():
        if name not in b_out:
            raise SerializationError(f"the {backend_b.name} artifact {os.fspath(b_dir)!r} has no output {name!r}")
        y = b_out[name].astype(np.float64)
        diff = float(np.max(np.abs(x.astype(np.float64) - y), initial=0.0))
        same = float(np.max(np.abs(same_graph[name].astype(np.float64) - y), initial=0.0))
        info = ma.get("outputs", {}).get(name, {})
        calibrated = ma.get("calibration", {}).get("output_steps", {}).get(name)
        input_step = float_steps[name][0] if name in float_steps else None
        step: float | None
        if info.get("quantized"):
            step, kind, input_step = min(float(s) for s in info["scale"]), "output scale", None
        elif calibrated is not None:
            step, kind = float(calibrated["step"]), "calibrated output step"
        elif name in float_steps:
            step, kind = float_steps[name]
        else:
            step, kind = None, "none"
        rows = x.ndim == 2 and x.shape[1] > 1
        argmax = float(np.mean(x.argmax(1) == y.argmax(1))) if rows else None
        report.rows.append(
            CrossRow(name, diff, step, kind, argmax, same, input_step, _min_cosine(x, y) if rows else None)
        )
    return report
