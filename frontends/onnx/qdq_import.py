"""Raise an imported model's QuantizeLinear/DequantizeLinear nodes into quant types on values.

A QDQ model (onnxruntime's `quantize_static`, NNCF's ONNX path, a torch PT2E export) spells fake quantization
as explicit ops. quantir's IR spells it as a `QuantType` on a value, meaning "readers see dequantize(quantize(v))".
The rules, one per pattern (`RULES`), applied in order:

* **constant -> DequantizeLinear** (weights and int32 biases stored quantized): the integer constant becomes a
  float constant holding `dequantize(q)` exactly as ONNX computes it (float32 `(q - zp) * s`), with the source's
  `QuantType`. Re-quantizing that payload with the same type gives back the same integers (the error of one float32
  rounding is far below half a step), so a backend that lowers the IR writes the source's integers again.
* **QuantizeLinear -> Clip -> DequantizeLinear(s)** (torch.onnx's lowering of PT2E's `quantize_per_channel`, e.g.
  a float weight with `convert_pt2e(fold_quantize=False)`): as the next rule, with the `QuantType`'s [qmin, qmax]
  narrowed to the Clip's constant integer bounds, which is exactly what the three ops compute. A Clip that narrows
  the range of a non-constant value (torch.onnx's fake quant with range [0, 127]) is left as ops: the backends'
  Q/DQ lowering of activations does not narrow the range yet.
* **QuantizeLinear -> DequantizeLinear(s)** (activations, also a float constant through Q -> DQ): the Q input gets
  the `QuantType` and every DQ reader reads it directly. One Q may feed several DQs with identical parameters. Where
  the Q input has other (float) readers, is a graph output, already carries another type, or comes out of an op
  whose quantized inputs and output must share one type, an `Identity` carries the type instead, so no float
  reader changes meaning.

A weight stored as integers whose initializer name says nothing (PT2E's `_frozen_param0`) is named after the
parameter it feeds, from its one reader's source module: `conv1.weight`, `fc1.bias`.

Granularity: per tensor (scalar or one-element scale), per axis (1-D scale, `axis`, opset >= 13) and blocked
(`block_size`, opset >= 21). Storage: i8/u8/i16/u16/i4/u4 and the fp8 types (zero point 0, saturating), i32 for
constants (biases). Scales may be float32, float16 or bfloat16 initializers.

Refused, before anything is rewritten: a scale, zero point or Clip bound that is not a constant
(`UnsupportedOpError`); a Q and its DQ with different parameters, a per-axis scale whose length is not the axis'
size, a zero point of another type than the data or outside its range, a non-positive or non-finite scale, Clip
bounds that are not scalars of the storage type or leave fewer than two levels (`QDQParameterError`). Each message
names the nodes. Patterns the IR cannot hold (a DQ of a non-constant integer input, a Q whose output is a graph
output or read by something other than a DQ) are left as ops.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from quantir.ir import (
    DType,
    FrontendError,
    Granularity,
    GranularityKind,
    Graph,
    Node,
    QuantType,
    Scheme,
    Tensor,
    TensorType,
    UnsupportedOpError,
    Value,
)
from quantir.ir.quant_math import dequantize
from quantir.ir.traits import traits_of

__all__ = ["RULES", "QDQParameterError", "QDQReport", "raise_qdq"]

QDQ_DOMAINS = ("", "ai.onnx", "com.microsoft")
"""Domains whose QuantizeLinear/DequantizeLinear have ONNX's meaning (ORT's contrib ops add 16-/4-bit storage)."""

STORAGE_DTYPES = frozenset(
    {DType.I8, DType.U8, DType.I16, DType.U16, DType.I4, DType.U4,
     DType.F8E4M3FN, DType.F8E4M3FNUZ, DType.F8E5M2, DType.F8E5M2FNUZ}
)  # fmt: skip
"""Quantized storage a Q -> DQ pair or a weight DQ may use."""
CONSTANT_ONLY_DTYPES = frozenset({DType.I32})
"""Storage only a DQ of a constant may use (int32 biases with scale s_x * s_w)."""
SCALE_DTYPES = frozenset({DType.F32, DType.F16, DType.BF16})

MIN_OPSET_PER_AXIS = 13
MIN_OPSET_BLOCKED = 21


class QDQParameterError(FrontendError):
    """A QDQ model whose quantization parameters are inconsistent or invalid (names the nodes and the mismatch)."""


@dataclass(slots=True)
class QDQReport:
    """What `raise_qdq` did: counts per rule and the Q/DQ nodes it left in place (with why)."""

    raised: dict[str, int]
    left: list[str]

    @property
    def total(self) -> int:
        return sum(self.raised.values())


def _is_q(node: Node) -> bool:
    return node.op_type == "QuantizeLinear" and node.domain in QDQ_DOMAINS


def _is_dq(node: Node) -> bool:
    return node.op_type == "DequantizeLinear" and node.domain in QDQ_DOMAINS


# ---- reading one node's parameters ---------------------------------------------------------------------------------


def _const_param(node: Node, index: int, what: str) -> np.ndarray | None:
    v = node.inputs[index] if index < len(node.inputs) else None
    if v is None:
        return None
    if v.const is None:
        raise UnsupportedOpError(
            f"{node.describe()}: its {what} %{v.name} is computed at run time{_runtime_hint(v)}; quantir imports "
            "Q/DQ nodes only with constant (initializer) scales and zero points"
        )
    return np.asarray(v.const.numpy())


def _runtime_hint(v: Value) -> str:
    """Where a non-constant parameter comes from, and the fix when it is a foldable constant expression."""
    p = v.producer
    if p is None:
        return " (it is a graph input)"
    if all(i is None or i.is_constant for i in p.inputs):
        return (
            f" by {p.describe()} from constants only; constant-fold the model first (torch.onnx.export does with "
            "optimize=True, its default; or run onnxscript.optimizer.optimize)"
        )
    return f" by {p.describe()} (dynamic quantization)"


def _scale_f32(node: Node, raw: np.ndarray) -> np.ndarray:
    v = node.inputs[1]
    assert v is not None and v.const is not None
    dt = v.const.dtype
    if dt not in SCALE_DTYPES:
        raise QDQParameterError(f"{node.describe()}: scale %{v.name} is {dt}; expected float32, float16 or bfloat16")
    if dt is DType.BF16:
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def _storage(node: Node) -> DType:
    """The quantized storage type: the DQ's data input; the Q's `output_dtype`, zero point, or uint8."""
    zp = node.inputs[2] if len(node.inputs) > 2 else None
    if _is_dq(node):
        x = node.inputs[0]
        dt = x.dtype if x is not None else None
        if dt is None:
            raise UnsupportedOpError(f"{node.describe()}: the type of its quantized input is unknown")
        return dt
    out_dt = node.attr("output_dtype", 0)
    if isinstance(out_dt, int) and out_dt:
        return DType.from_onnx(out_dt)
    if zp is not None and zp.const is not None:
        return zp.const.dtype
    return DType.U8


def _rank(node: Node) -> int | None:
    x = node.inputs[0]
    return x.type.rank if x is not None and isinstance(x.type, TensorType) else None


def _dim(node: Node, axis: int) -> int | None:
    x = node.inputs[0]
    if x is None or not isinstance(x.type, TensorType) or x.type.shape is None:
        return None
    d = x.type.shape[axis]
    return d if isinstance(d, int) else None


def _granularity(node: Node, scale: np.ndarray, opset: int) -> Granularity:
    block = node.attr("block_size", 0)
    axis_attr = node.attr("axis", 1)
    assert isinstance(block, int) and isinstance(axis_attr, int)
    rank = _rank(node)
    axis = axis_attr + rank if axis_attr < 0 and rank is not None else axis_attr
    if rank is not None and not 0 <= axis < rank and (block or scale.size > 1):
        raise QDQParameterError(f"{node.describe()}: axis {axis_attr} is out of range for its rank-{rank} input")
    if block:
        if opset < MIN_OPSET_BLOCKED and node.domain in ("", "ai.onnx"):
            raise QDQParameterError(f"{node.describe()}: block_size needs opset {MIN_OPSET_BLOCKED}, model is {opset}")
        if block < 0:
            raise QDQParameterError(f"{node.describe()}: block_size {block} must be positive")
        g = Granularity.per_group(axis, block)
        x = node.inputs[0]
        shape = x.type.shape if x is not None and isinstance(x.type, TensorType) else None
        if shape is not None and all(isinstance(d, int) for d in shape):
            want = tuple(-(-d // block) if i == axis else d for i, d in enumerate(shape) if isinstance(d, int))
            if scale.shape != want:
                raise QDQParameterError(
                    f"{node.describe()}: blocked scale has shape {list(scale.shape)}; block_size {block} on axis "
                    f"{axis_attr} of a {list(shape)} input needs {list(want)}"
                )
        return g
    if scale.size == 1 and scale.ndim <= 1:
        return Granularity.per_tensor()
    if scale.ndim != 1:
        raise QDQParameterError(
            f"{node.describe()}: scale has shape {list(scale.shape)}; expected a scalar, a 1-D per-axis scale, or "
            "block_size for a blocked one"
        )
    if opset < MIN_OPSET_PER_AXIS and node.domain in ("", "ai.onnx"):
        raise QDQParameterError(
            f"{node.describe()}: a {scale.size}-element scale is per-axis, which needs opset {MIN_OPSET_PER_AXIS}; "
            f"the model is opset {opset}"
        )
    dim = _dim(node, axis)
    if dim is not None and dim != scale.size:
        raise QDQParameterError(
            f"{node.describe()}: per-axis scale has {scale.size} elements but axis {axis_attr} of its input has "
            f"size {dim}"
        )
    return Granularity.per_channel(axis)


def read_qtype(node: Node, opset: int) -> QuantType:
    """The `QuantType` a QuantizeLinear or DequantizeLinear node applies, validated."""
    raw_scale = _const_param(node, 1, "scale")
    if raw_scale is None:
        raise QDQParameterError(f"{node.describe()} has no scale input")
    raw_zp = _const_param(node, 2, "zero point")
    dtype = _storage(node)
    x = node.inputs[0]
    allowed = STORAGE_DTYPES | (CONSTANT_ONLY_DTYPES if _is_dq(node) and x is not None and x.is_constant else set())
    if dtype not in allowed:
        raise UnsupportedOpError(
            f"{node.describe()}: quantized storage {dtype} is not supported; expected one of "
            f"{', '.join(sorted(d.value for d in allowed))}"
        )
    zp_value = node.inputs[2] if len(node.inputs) > 2 else None
    if zp_value is not None and zp_value.dtype is not dtype:
        raise QDQParameterError(
            f"{node.describe()}: zero point %{zp_value.name} is {zp_value.dtype} but the quantized data is {dtype}"
        )
    if node.attr("saturate", 1) == 0 and dtype.is_float:
        raise UnsupportedOpError(f"{node.describe()}: saturate=0 (non-saturating fp8 cast) is not supported")
    scale = _scale_f32(node, raw_scale)
    if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
        bad = scale[~(np.isfinite(scale) & (scale > 0))].reshape(-1)[:3].tolist()
        raise QDQParameterError(f"{node.describe()}: scales must be finite and > 0; found {bad}")
    g = _granularity(node, scale, opset)
    if g.kind is GranularityKind.PER_TENSOR:
        scale = scale.reshape(())
    zp = np.zeros(scale.shape, np.int64) if raw_zp is None else raw_zp
    if zp.size != scale.size:
        raise QDQParameterError(
            f"{node.describe()}: zero point has shape {list(zp.shape)} but scale has shape {list(raw_scale.shape)}"
        )
    zp = zp.reshape(scale.shape)
    if dtype.is_float:
        if np.any(zp != 0):
            raise UnsupportedOpError(f"{node.describe()}: {dtype} with a non-zero zero point is not supported")
        return QuantType(dtype, Scheme.SYM, g, scale, np.zeros(scale.shape, np.float32), 0, 0, "none")
    lo, hi = dtype.int_range
    zp64 = zp.astype(np.int64)
    if np.any(zp64 < lo) or np.any(zp64 > hi):
        raise QDQParameterError(
            f"{node.describe()}: zero point {zp64.reshape(-1)[:3].tolist()} is outside {dtype}'s range [{lo}, {hi}]"
        )
    signed = lo < 0
    sym = bool(np.all(zp64 == 0)) if signed else bool(np.all(zp64 == (hi + 1) // 2))
    return QuantType(dtype, Scheme.SYM if sym else Scheme.ASYM, g, scale, zp64.astype(np.int32), lo, hi, "none")


def _mismatch(a: QuantType, b: QuantType) -> str | None:
    """Why two nodes' parameters differ (None when they are the same quantizer)."""
    if a.dtype is not b.dtype:
        return f"storage {a.dtype} vs {b.dtype}"
    if a.granularity != b.granularity:
        return f"granularity {a.granularity} vs {b.granularity}"
    if a.scale.shape != b.scale.shape or not np.array_equal(a.scale, b.scale):
        return f"scale {a.scale.reshape(-1)[:4].tolist()} vs {b.scale.reshape(-1)[:4].tolist()}"
    if not np.array_equal(a.zero_point, b.zero_point):
        return f"zero point {a.zero_point.reshape(-1)[:4].tolist()} vs {b.zero_point.reshape(-1)[:4].tolist()}"
    return None


# ---- the rewriting -------------------------------------------------------------------------------------------------


class _Raiser:
    """One raising run over a graph: the names taken, the parameter constants to drop if unread."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.taken = {v.name for v in graph.values()} | {n.name for n in graph.nodes}
        self.params: dict[int, Value] = {}
        self.report = QDQReport({rule.name: 0 for rule in RULES}, [])
        self.pending_names: list[tuple[Value, str]] = []
        """Values that take over the name of a removed DQ output that was a graph output."""

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}.{i}", i + 1
        self.taken.add(name)
        return name

    def drop(self, node: Node) -> None:
        """Erase a Q/DQ node, remembering its constant inputs to remove once nothing reads them."""
        for v in node.inputs:
            if v is not None and v.const is not None:
                self.params[id(v)] = v
        self.graph.erase(node)

    def carrier(self, v: Value, q: QuantType, before: Node) -> Value:
        """The value that carries `q` for the DQ readers: `v` itself, or an Identity/constant copy of it."""
        other_readers = any(not _is_q(n) for n in v.users())
        producer = v.producer
        shared = producer is not None and traits_of(producer.op_type, producer.domain).shared_scales
        conflict = shared and any(
            isinstance(i.quant, QuantType) and i.quant != q for i in (producer.inputs if producer else ()) if i
        )
        if v.quant is None and not other_readers and not self.graph.is_output(v) and not conflict:
            return v
        if v.quant == q and not other_readers and not self.graph.is_output(v):
            return v
        if v.const is not None:
            return self.graph.add_constant(self.fresh(f"{v.name}_quantized_view"), v.const)
        out = Value(self.fresh(f"{v.name}_quantized"), v.type)
        self.graph.insert_before(before, Node("Identity", [v], [out], name=self.fresh(f"{v.name}_QuantIdentity")))
        return out

    def replace_output(self, old: Value, new: Value) -> None:
        """Readers (and graph outputs) of `old` read `new`; a graph output keeps its name where it can."""
        was_output = self.graph.is_output(old)
        old.replace_all_uses_with(new, graph_outputs=self.graph)
        if was_output and new.producer is not None and new not in self.graph.inputs:
            self.pending_names.append((new, old.name))

    def finish(self) -> None:
        for v in self.params.values():
            if not v.has_uses() and not self.graph.is_output(v) and self.graph.constants.get(v.name) is v:
                self.graph.remove_constant(v)
        for v, name in self.pending_names:
            v.name = name  # the DQ that held this name is gone


def _parameter_name(v: Value) -> str:
    """`<module>.weight` / `<module>.bias` when `v` has one reader, which reads it in that role and has a source
    module (torch.onnx's provenance); "" otherwise."""
    uses = v.uses()
    if len(uses) != 1:
        return ""
    node, idx = uses[0]
    traits = traits_of(node.op_type, node.domain)
    role = "weight" if idx in traits.weights else "bias" if idx == traits.bias else ""
    module = node.source.module if node.source is not None else ""
    return f"{module}.{role}" if module and role else ""


def _weight_name(r: _Raiser, x: Value, out: Value) -> str:
    """A raised weight's name: the stem of ORT's `<name>_quantized`, else the parameter its reader reads
    (`conv1.weight` for PT2E's `_frozen_param0`), else the DQ output's name (free once the DQ is gone)."""
    stem = x.name[: -len("_quantized")] if x.name.endswith("_quantized") else ""
    name = next((n for n in (stem, _parameter_name(out)) if n and n not in r.taken), out.name)
    r.taken.add(name)
    return name


def _raise_weight(r: _Raiser, dq: Node, opset: int) -> bool:
    """constant (integer) -> DequantizeLinear: a float constant of the dequantized values with the source's type."""
    x, out = dq.inputs[0], dq.outputs[0]
    if x is None or x.const is None or out is None:
        return False
    q = read_qtype(dq, opset)
    values = dequantize(x.const.numpy(), q)
    dtype = out.dtype or DType.F32
    if dtype not in (DType.F32, DType.F16):
        raise UnsupportedOpError(f"{dq.describe()}: dequantizing to {dtype} is not supported (float32/float16 only)")
    tensor = Tensor.from_numpy(values.astype(dtype.storage), dtype)
    c = r.graph.add_constant(_weight_name(r, x, out), tensor, quant=q)
    out.replace_all_uses_with(c, graph_outputs=r.graph)
    r.drop(dq)
    return True


def _clip_reader(qn: Node) -> Node | None:
    """The Clip that alone reads `qn`'s output (torch.onnx writes PT2E's `quantize_per_channel` as Q -> Clip)."""
    out = qn.outputs[0] if qn.outputs else None
    if out is None or qn.graph is None or qn.graph.is_output(out) or len(out.uses()) != 1:
        return None
    reader, idx = out.uses()[0]
    return reader if idx == 0 and reader.op_type == "Clip" and reader.domain in ("", "ai.onnx") else None


def _clip_range(clip: Node, q: QuantType) -> tuple[int, int]:
    """`q`'s integer range narrowed by the constant bounds of the `clip` that follows its QuantizeLinear."""
    if not q.dtype.is_integer:
        raise UnsupportedOpError(
            f"{clip.describe()}: clips {q.dtype} quantized data; only integer storage is supported"
        )
    bounds = [q.qmin, q.qmax]
    for i, what in ((1, "min"), (2, "max")):
        v = clip.inputs[i] if i < len(clip.inputs) else None
        if v is None:
            continue
        if v.const is None:
            raise UnsupportedOpError(
                f"{clip.describe()}: its {what} %{v.name} is computed at run time; quantir raises QuantizeLinear -> "
                "Clip -> DequantizeLinear only with constant bounds"
            )
        if v.const.dtype is not q.dtype or v.const.size != 1:
            raise QDQParameterError(
                f"{clip.describe()}: {what} %{v.name} is {v.const.dtype}{list(v.const.shape)}; expected a {q.dtype} "
                "scalar, the type of the quantized data it clips"
            )
        bounds[i - 1] = int(np.asarray(v.const.numpy()).reshape(()))
    lo, hi = max(q.qmin, bounds[0]), min(q.qmax, bounds[1])
    if lo >= hi:
        raise QDQParameterError(
            f"{clip.describe()}: clips {q.dtype} data to [{bounds[0]}, {bounds[1]}], which leaves "
            f"{max(hi - lo + 1, 0)} level(s); a quantized range needs at least two"
        )
    return lo, hi


def _raise_pair(r: _Raiser, qn: Node, opset: int, clip: Node | None) -> bool:
    """QuantizeLinear [-> Clip] -> DequantizeLinear(s): the Q input carries the type; the DQ readers read it."""
    v, qout = qn.inputs[0], qn.outputs[0]
    last = clip.outputs[0] if clip is not None else qout
    if v is None or last is None:
        return False
    readers = last.users()
    if not readers or r.graph.is_output(last) or not all(_is_dq(n) for n in readers):
        r.report.left.append(f"{(clip or qn).describe()}: its output is not read only by DequantizeLinear nodes")
        return False
    q = read_qtype(qn, opset)
    if any(u.idx != 0 for u in last.uses()):
        r.report.left.append(f"{qn.describe()}: a DequantizeLinear reads its output as scale or zero point")
        return False
    for dq in readers:
        why = _mismatch(q, read_qtype(dq, opset))
        if why is not None:
            raise QDQParameterError(
                f"inconsistent quantization parameters: {qn.describe()} and {dq.describe()} differ in {why}; a Q/DQ "
                "pair must use the same scale, zero point and axis"
            )
    if isinstance(v.type, TensorType) and not v.type.dtype.is_float:
        raise QDQParameterError(f"{qn.describe()}: quantizes %{v.name} of type {v.type.dtype}, not a float tensor")
    if clip is not None:
        lo, hi = _clip_range(clip, q)
        if (lo, hi) != (q.qmin, q.qmax) and not v.is_constant:
            r.report.left.append(
                f"{clip.describe()}: narrows the quantized range of %{v.name} to [{lo}, {hi}]; quantir's Q/DQ "
                f"lowering of activations saturates at the full {q.dtype} range, so the ops are kept"
            )
            return False
        q = dataclasses.replace(q, qmin=lo, qmax=hi)
    target = r.carrier(v, q, qn)
    target.quant = q
    for dq in readers:
        r.replace_output(dq.output(), target)
        r.drop(dq)
    if clip is not None:
        r.drop(clip)
    r.drop(qn)
    return True


def _raise_clipped(r: _Raiser, qn: Node, opset: int) -> bool:
    """QuantizeLinear -> Clip -> DequantizeLinear(s): a quant type with the Clip's narrower integer range."""
    return _raise_pair(r, qn, opset, _clip_reader(qn))


def _raise_activation(r: _Raiser, qn: Node, opset: int) -> bool:
    """QuantizeLinear -> DequantizeLinear(s): the Q input carries the type; the DQ readers read it."""
    return _raise_pair(r, qn, opset, None)


@dataclass(frozen=True, slots=True)
class Rule:
    """One pattern: which node anchors it and how it is rewritten (returns False to leave it)."""

    name: str
    anchor: Callable[[Node], bool]
    apply: Callable[[_Raiser, Node, int], bool]


RULES: tuple[Rule, ...] = (
    Rule("constant -> DequantizeLinear (stored-quantized weight or bias)",
         lambda n: _is_dq(n) and n.inputs[0] is not None and n.inputs[0].is_constant, _raise_weight),
    Rule("QuantizeLinear -> Clip -> DequantizeLinear (quantized value, narrowed range)",
         lambda n: _is_q(n) and _clip_reader(n) is not None, _raise_clipped),
    Rule("QuantizeLinear -> DequantizeLinear (quantized value)",
         lambda n: _is_q(n) and _clip_reader(n) is None, _raise_activation),
)  # fmt: skip
"""The patterns, applied in this order over the whole graph (weights first: a DQ'd weight may feed a Q -> DQ)."""


def _validate_all(graph: Graph, opset: int) -> None:
    """Read every Q/DQ node's parameters, so that a bad one fails before the graph is changed."""
    for node in graph.nodes:
        if _is_q(node) or _is_dq(node):
            q = read_qtype(node, opset)
            if _is_q(node) and (clip := _clip_reader(node)) is not None:
                _clip_range(clip, q)


def raise_qdq(graph: Graph) -> QDQReport:
    """Rewrite `graph`'s raisable Q/DQ patterns into quant types, in place. The caller verifies the graph."""
    opset = graph.opset
    if not any(_is_q(n) or _is_dq(n) for n in graph.nodes):
        return QDQReport({rule.name: 0 for rule in RULES}, [])
    _validate_all(graph, opset)
    r = _Raiser(graph)
    for rule in RULES:
        for node in graph.nodes:
            if node.graph is graph and rule.anchor(node) and rule.apply(r, node, opset):
                r.report.raised[rule.name] += 1
    r.finish()
    for node in graph.nodes:
        if _is_dq(node) and not any(node.describe() in s for s in r.report.left):
            r.report.left.append(f"{node.describe()}: dequantizes a non-constant integer value")
    return r.report
