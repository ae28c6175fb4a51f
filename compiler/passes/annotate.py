"""`annotate`: resolve the user's config (INC semantics) against the target's capabilities and put a
`QuantSpec` on every value to be quantized. Every op gets a decision; every op left float gets a reason.

Compute ops get specs on their weights (per the op traits' channel axis), activation inputs and output;
scale-transparent ops follow their data input; Relu/Clip after a quantized op are quantized on their output
so the backend can absorb them. A value's first spec wins (its producer's), so specs never conflict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from quantir.backends.contract import CapabilityTable
from quantir.backends.registry import DEFAULT_BACKEND, get_backend
from quantir.compiler.config.quant_config import StaticQuantConfig
from quantir.compiler.config.resolve import ResolvedOpConfig, op_ref, resolve_op_configs
from quantir.compiler.decisions import record
from quantir.compiler.isa import default_reduce_range
from quantir.compiler.pass_manager import PassContext, PassResult, register_pass
from quantir.compiler.qparams.scales import quant_range
from quantir.ir import DType, GranularityKind, Graph, Node, QuantSpec, TensorType, Value, traits_of, weight_inputs
from quantir.ir.traits import UnitKind

__all__ = ["Annotate"]

_FLOAT_TYPES = (DType.F32, DType.F16)

JOIN_OPS = frozenset({"Add", "Mul"})
"""Elementwise ops quantized only where they connect int8 units (CNN residual blocks), never where they join a
float stream (a transformer's residual stream through LayerNorm): there an int8 Add only adds Q/DQ pairs and
per-tensor rounding of the residual."""


def _is_float_tensor(v: Value | None) -> bool:
    return v is not None and isinstance(v.type, TensorType) and v.type.dtype in _FLOAT_TYPES


def _weight_spec(spec: QuantSpec, reduce_range: bool) -> QuantSpec:
    if not reduce_range or not spec.dtype.is_integer or spec.dtype not in (DType.I8, DType.U8):
        return spec
    qmin, qmax = quant_range(spec.dtype, symmetric=spec.scheme.value == "sym", reduce_range=True)
    return QuantSpec(spec.dtype, spec.scheme, spec.granularity, spec.observer, qmin, qmax)


def _absorbed_by_reader(v: Value, caps: CapabilityTable, wants: dict[Node, bool], graph: Graph) -> bool:
    """`v` is a compute op's output whose only reader is a Relu/Clip that will be quantized: one quantizer, after
    the activation, serves both (quantizing before it too would round twice)."""
    producer = v.producer
    readers = v.users()
    return (
        producer is not None
        and caps.units.get(producer.op_type) is UnitKind.COMPUTE
        and wants.get(producer, False)
        and len(v.uses()) == 1
        and not graph.is_output(v)
        and caps.units.get(readers[0].op_type) is UnitKind.ABSORBED
        and wants.get(readers[0], False)
    )


def _join_connects_int8(node: Node, caps: CapabilityTable, wants: dict[Node, bool]) -> bool:
    for v in node.inputs:
        if v is None or v.const is not None:
            continue
        if not _is_float_tensor(v) or v.producer is None or not wants.get(v.producer, False):
            return False
    out = node.outputs[0] if node.outputs else None
    return out is not None and _read_quantized(out, caps, wants)


def _read_quantized(v: Value, caps: CapabilityTable, wants: dict[Node, bool], depth: int = 0) -> bool:
    """Whether a reader of `v` will be quantized: a unit that wants quantization, looking through data movement and
    through activations (a Relu/Clip quantized for no int8 reader, like the gate of a decomposed hard-swish, only
    adds rounding)."""
    for reader in v.users():
        if not wants.get(reader, False):
            continue
        if caps.units.get(reader.op_type) not in (UnitKind.DROP, UnitKind.ABSORBED):
            return True
        out = reader.outputs[0] if reader.outputs else None
        if depth < 16 and out is not None and _read_quantized(out, caps, wants, depth + 1):
            return True
    return False


@register_pass
@dataclass(frozen=True, slots=True)
class Annotate:
    name: ClassVar[str] = "annotate"

    backend: str = DEFAULT_BACKEND
    config: StaticQuantConfig = field(default_factory=StaticQuantConfig)
    reduce_range: bool | None = None
    """Overrides the config's reduce_range; None keeps it (and the config's None means: decide from the CPU)."""

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        caps = get_backend(self.backend).capabilities
        nodes = list(graph.nodes)
        resolved = resolve_op_configs(self.config, [op_ref(n, i) for i, n in enumerate(nodes)],
                                      known_op_types=set(caps.units))  # fmt: skip
        wants = {n: caps.units.get(n.op_type) is not None and r.quantize for n, r in zip(nodes, resolved, strict=True)}
        changed_intent = True
        while changed_intent:  # intents only turn off, so this reaches a fixpoint
            changed_intent = False
            for n in nodes:
                if n.op_type in JOIN_OPS and wants[n] and not _join_connects_int8(n, caps, wants):
                    wants[n] = changed_intent = True
                    wants[n] = False
        changed = False
        for node, res in zip(nodes, resolved, strict=True):
            quantized, reason = self._annotate(graph, node, res, caps, wants)
            record(ctx, node, quantized, reason)
            changed |= quantized
        ctx.reduce_range = self._reduce_range()
        return PassResult(changed)

    def _reduce_range(self) -> bool:
        rr = self.reduce_range if self.reduce_range is not None else self.config.reduce_range
        return default_reduce_range() if rr is None else rr

    def _annotate(
        self, graph: Graph, node: Node, res: ResolvedOpConfig, caps: CapabilityTable, wants: dict[Node, bool]
    ) -> tuple[bool, str]:
        if node.domain not in ("", "ai.onnx"):
            return False, f"op of domain {node.domain!r} has no integer kernel in {caps.runtime}"
        kind = caps.units.get(node.op_type)
        if kind is None:
            return False, caps.float_reason(node.op_type)
        if not res.quantize:
            return False, res.reason
        if kind is UnitKind.COMPUTE and node.op_type in JOIN_OPS and not wants.get(node, False):
            return False, (f"{node.op_type} joins float data (an input not produced by an int8 kernel, or no int8 "
                           "kernel reads it): int8 here would only add Q/DQ pairs")  # fmt: skip
        if kind is UnitKind.COMPUTE:
            return self._compute(graph, node, res, caps, wants)
        data = node.inputs[0] if node.inputs else None
        feeds_from_unit = (
            kind is UnitKind.ABSORBED and data is not None and _absorbed_by_reader(data, caps, wants, graph)
        )
        quantized_input = data is not None and (isinstance(data.quant, QuantSpec) or feeds_from_unit)
        if data is None or data.const is not None or not quantized_input:
            return False, "its input is not quantized"
        out = node.outputs[0]
        if out is None or not _is_float_tensor(out):
            return False, "its output is not a float tensor"
        if kind is UnitKind.DROP:
            assert isinstance(data.quant, QuantSpec)
            if data.quant.granularity.kind is not GranularityKind.PER_TENSOR:
                return False, "its input is quantized per channel"
            self._set(out, data.quant)
            return True, "moves int8 data: shares its input's quantization"
        act = res.activation_spec()
        if act is None:
            return False, res.reason
        self._set(out, act)
        return True, "absorbed into the preceding quantized op's output"

    def _compute(
        self, graph: Graph, node: Node, res: ResolvedOpConfig, caps: CapabilityTable, wants: dict[Node, bool]
    ) -> tuple[bool, str]:
        traits = traits_of(node.op_type)
        weights = weight_inputs(node)
        act = res.activation_spec()
        plan: list[tuple[Value, QuantSpec]] = []
        for i, v in enumerate(node.inputs):
            if v is None or i == traits.bias:
                continue
            if not _is_float_tensor(v):
                return False, f"input {i} (%{v.name}) is not a float tensor"
            if i in weights and v.const is not None:
                axis = weights[i]
                spec = res.weight_spec(axis) if res.weight and res.weight.granularity is GranularityKind.PER_CHANNEL \
                    else (None if res.weight is None else res.weight.spec())  # fmt: skip
                if spec is None:
                    return False, res.reason
                plan.append((v, _weight_spec(spec, self._reduce_range())))
                continue
            if node.op_type in caps.weight_inputs_only and i in traits.weights:
                return False, f"{node.op_type} of two activations has no integer kernel in {caps.runtime}"
            if act is None:
                return False, res.reason
            plan.append((v, v.quant if isinstance(v.quant, QuantSpec) else act))
        out = node.outputs[0]
        if out is None or not _is_float_tensor(out) or act is None:
            return False, "its output is not a float tensor"
        for v, spec in plan:
            self._set(v, spec)
        if _absorbed_by_reader(out, caps, wants, graph):
            return True, f"{res.reason}; the Relu/Clip after it carries the output quantizer"
        if node.op_type not in caps.float_output_ok or _read_quantized(out, caps, wants):
            self._set(out, act)
            return True, res.reason
        return True, f"{res.reason}; output stays float (no quantized reader)"

    @staticmethod
    def _set(v: Value, spec: QuantSpec) -> None:
        if v.quant is None:
            v.quant = spec
