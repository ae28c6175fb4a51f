"""The torch code generator both torch backends share: a legalized IR graph -> an `nn.Module` that computes the IR's
fake-quant semantics with aten ops, with quantization spelled the way a torch int8 lowering fuses it.

- Every Conv/Gemm/MatMul with a constant weight becomes a submodule at the user's module path (`fc1`,
  `encoder.layer.0.attention.self.query`): traced and exported graphs keep the names (`nn_module_stack`, TorchScript
  submodules). MatMul weights are stored as torch Linear weights ([N, K]) and a following bias Add is folded into
  the linear, so the graph is `dequantize(x), dequantize(w) -> linear(+bias)`, the pattern X86InductorQuantizer
  writes and IPEX's JIT fuses.
- A quantized activation gets quantize -> dequantize right after its producer; a quantized weight is stored as what
  the flavor dequantizes. The flavor (`QuantFlavor`) says how: `quantized_decomposed` ops for PT2E, quantized
  tensors (`torch.quantize_per_tensor(...).dequantize()`) for IPEX's TorchScript.
- Every other op runs its ONNX semantics (`ops.OPS`); an op without a mapping is a `SerializationError` naming it.

The module's `forward` takes the graph inputs by name; it is meant to be traced (`torch.export`, `torch.jit.trace`).
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from quantir.backends.legality import quant_type_of
from quantir.backends.onnx_proto.qdq import node_names
from quantir.backends.torch_codegen.ops import OPS, as_tensor, conv, unsupported
from quantir.ir import DType, GranularityKind, Graph, Node, QuantType, SerializationError, TensorType, Value
from quantir.ir.quant_math import fake_quantize

__all__ = [
    "Observer",
    "QuantFlavor",
    "Unit",
    "build_module",
    "example_inputs",
    "fp8_codes",
    "fp8_fake_quant",
    "input_names",
    "torch_dtype",
]

_TORCH_DTYPES = {
    DType.F32: torch.float32, DType.F16: torch.float16, DType.BF16: torch.bfloat16, DType.F64: torch.float64,
    DType.I64: torch.int64, DType.I32: torch.int32, DType.I16: torch.int16, DType.I8: torch.int8,
    DType.U8: torch.uint8, DType.BOOL: torch.bool,
}  # fmt: skip


def torch_dtype(dtype: DType, where: str) -> torch.dtype:
    if dtype not in _TORCH_DTYPES:
        raise SerializationError(f"{where}: {dtype} has no torch dtype in the torch code generator")
    return _TORCH_DTYPES[dtype]


class QuantFlavor(Protocol):
    """How one torch lowering spells quantization."""

    name: str

    def activation(self, x: torch.Tensor, q: QuantType) -> torch.Tensor:
        """dequantize(quantize(x)) for a per-tensor 8-bit activation."""
        ...

    def store_weight(self, w: np.ndarray, q: QuantType) -> torch.Tensor:
        """The tensor the module stores for weight `w` (Linear/Conv layout, output channels on axis 0)."""
        ...

    def weight(self, stored: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, q: QuantType) -> torch.Tensor:
        """The float weight the op reads, from what `store_weight` stored."""
        ...


def generic_fake_quant(x: torch.Tensor, q: QuantType) -> torch.Tensor:
    """The IR's fake-quant formula in plain aten (any integer width or granularity), for quant types no int8 kernel
    reads (they change numbers, so they are kept; they cost a few float ops)."""
    shape = [1] * x.dim()
    scale = torch.from_numpy(np.asarray(q.scale, dtype=np.float32).copy())
    zp = torch.from_numpy(np.asarray(q.zero_point, dtype=np.float32).copy())
    if q.granularity.kind is GranularityKind.PER_CHANNEL and q.granularity.axis is not None and x.dim():
        shape[q.granularity.axis % x.dim()] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    elif q.granularity.kind is GranularityKind.PER_GROUP:
        raise SerializationError("a per-group quantized activation has no torch lowering")
    else:
        scale, zp = scale.reshape(()), zp.reshape(())
    return (torch.clamp(torch.round(x / scale) + zp, q.qmin, q.qmax) - zp) * scale


_TORCH_FP8: dict[DType, torch.dtype] = {
    DType.F8E4M3FN: torch.float8_e4m3fn, DType.F8E5M2: torch.float8_e5m2, DType.F8E4M3FNUZ: torch.float8_e4m3fnuz,
    DType.F8E5M2FNUZ: torch.float8_e5m2fnuz,
}  # fmt: skip


def _scale_like(x: torch.Tensor, q: QuantType) -> torch.Tensor:
    scale = torch.from_numpy(np.asarray(q.scale, dtype=np.float32).copy())
    if q.granularity.kind is GranularityKind.PER_CHANNEL and q.granularity.axis is not None and x.dim():
        shape = [1] * x.dim()
        shape[q.granularity.axis % x.dim()] = -1
        return scale.reshape(shape)
    if q.granularity.kind is GranularityKind.PER_GROUP:
        raise SerializationError("a per-group FP8 tensor has no torch lowering")
    return scale.reshape(())


def fp8_codes(x: torch.Tensor, q: QuantType) -> torch.Tensor:
    """torch's own FP8 cast of x / s (saturated to the format's largest finite value, as `quant_math.quantize`
    does: torch casts an out-of-range value to NaN), as a tensor of the FP8 dtype."""
    dt = _TORCH_FP8.get(q.dtype)
    if dt is None:
        raise SerializationError(f"{q.dtype} is not an FP8 type torch can cast to")
    limit = float(torch.finfo(dt).max)
    return torch.clamp(x.float() / _scale_like(x, q), -limit, limit).to(dt)


def fp8_fake_quant(x: torch.Tensor, q: QuantType) -> torch.Tensor:
    """cast_fp8(x / s) * s with torch's float8 dtypes: the CPU emulation of an FP8 quantizer."""
    return (fp8_codes(x, q).to(torch.float32) * _scale_like(x, q)).to(x.dtype)


Observer = Callable[[str, torch.Tensor, QuantType], None]
"""Called with every activation (value name, float tensor, its quant type) before it is fake-quantized."""


@dataclass(frozen=True, slots=True)
class _Step:
    node: Node
    inputs: tuple[str | None, ...]
    outputs: tuple[str | None, ...]
    unit: str | None = None
    """Attribute path of the node's `Unit` submodule (Conv/Gemm/MatMul with a constant weight)."""


class Unit(nn.Module):
    """One Conv/Linear of the IR with its (quantized) weight and float bias."""

    def __init__(self, node: Node, kind: str, flavor: QuantFlavor, w: np.ndarray, qw: QuantType | None,
                 bias: np.ndarray | None) -> None:  # fmt: skip
        super().__init__()
        self.kind, self.node, self.flavor, self.qw = kind, node, flavor, qw
        if qw is not None:
            self.register_buffer("weight", flavor.store_weight(w, qw))
            self.register_buffer("weight_scale", torch.from_numpy(np.asarray(qw.scale, np.float32).reshape(-1).copy()))
            zp = np.asarray(qw.zero_point, np.int64).reshape(-1).copy()
            self.register_buffer("weight_zero_point", torch.from_numpy(zp))
        else:
            self.register_buffer("weight", torch.from_numpy(np.array(w, dtype=np.float32, copy=True)))
        self.bias: torch.Tensor | None
        if bias is not None:
            self.register_buffer("bias", torch.from_numpy(np.array(bias, dtype=np.float32, copy=True)))
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w: torch.Tensor = self.weight  # type: ignore[assignment]  # a registered buffer
        if self.qw is not None:
            w = self.flavor.weight(w, self.weight_scale, self.weight_zero_point, self.qw)  # type: ignore[arg-type]
        if self.kind == "conv":
            return conv(self.node, x, w, self.bias)  # type: ignore[arg-type]
        return torch.nn.functional.linear(x, w, self.bias)  # type: ignore[arg-type]


def _identifier(name: str, taken: set[str]) -> str:
    base = re.sub(r"\W", "_", name) or "v"
    if base[0].isdigit() or keyword.iskeyword(base):
        base = f"v_{base}"
    out, i = base, 1
    while out in taken:
        out, i = f"{base}_{i}", i + 1
    taken.add(out)
    return out


def input_names(graph: Graph) -> list[str]:
    """Python identifiers for the graph inputs (the generated forward's parameters), in order."""
    taken: set[str] = {"self"}
    return [_identifier(v.name, taken) for v in graph.inputs]


def _const_array(v: Value) -> np.ndarray:
    assert v.const is not None
    return np.asarray(v.const.numpy())


def _bias_add(graph: Graph, node: Node, n_out: int) -> tuple[Node, np.ndarray] | None:
    """The Add that adds a constant [N] bias to a MatMul's output, when it can fold into the linear."""
    y = node.outputs[0]
    if y is None or graph.is_output(y) or quant_type_of(y) is not None or len(y.uses()) != 1:
        return None
    add = y.uses()[0].node
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
        return None
    other = add.inputs[1 - y.uses()[0].idx]
    if other is None or not other.is_constant or quant_type_of(other) is not None:
        return None
    b = _const_array(other)
    if b.shape != (n_out,) or b.dtype != np.float32:
        return None
    return add, b


def _linear_weight(node: Node, w: np.ndarray, qw: QuantType | None) -> tuple[np.ndarray, QuantType | None] | None:
    """(weight in torch Linear layout [N, K], its quant type with output channels on axis 0), or None when the op
    is not a plain linear."""
    if w.ndim != 2:
        return None
    transpose = node.op_type == "MatMul" or not node.attr("transB", 0)
    if node.op_type == "Gemm" and (node.attr("transA", 0) or float(node.attr("alpha", 1.0)) != 1.0  # type: ignore[arg-type]
                                   or float(node.attr("beta", 1.0)) != 1.0):  # type: ignore[arg-type]  # fmt: skip
        return None
    if not transpose:
        return w, qw
    if qw is not None and qw.granularity.kind is GranularityKind.PER_CHANNEL:
        qw = QuantType(qw.dtype, qw.scheme, type(qw.granularity).per_channel(0), qw.scale, qw.zero_point, qw.qmin,
                       qw.qmax, qw.observer)  # fmt: skip
    return np.ascontiguousarray(w.T), qw


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> str:
    """Attach `module` at the dotted `path` (creating plain containers on the way); returns the path used (a suffix
    is added when another unit already sits there)."""
    parts = [p for p in path.split(".") if p] or ["unit"]
    final, i = path or "unit", 1
    while True:
        try:
            root.get_submodule(final)
        except AttributeError:
            break
        final, i = f"{path or 'unit'}_{i}", i + 1
    parts = final.split(".")
    parent = root
    for p in parts[:-1]:
        child = getattr(parent, p, None) if p in parent._modules else None
        if child is None:
            child = nn.Module()
            parent.add_module(p, child)
        parent = child
    parent.add_module(parts[-1], module)
    return final


class IRModule(nn.Module):
    """The generated module (see the module docstring); `forward` is generated with the graph's input names."""

    def __init__(self, graph: Graph, flavor: QuantFlavor) -> None:
        super().__init__()
        self.flavor = flavor
        self._steps: list[_Step] = []
        self._consts: dict[str, str] = {}
        self._small: dict[str, np.ndarray] = {}
        self._input_names = [v.name for v in graph.inputs]
        self._input_quant = [quant_type_of(v) for v in graph.inputs]
        self._output_names = [v.name for v in graph.outputs]
        self._quant: dict[str, QuantType] = {}
        self.observer: Observer | None = None
        """Sees every activation before its fake-quant (verification), when set."""
        self.unit_names: dict[str, str] = {}
        """IR node name -> the submodule path of its unit."""
        taken: set[str] = set()
        skip: set[Node] = set()
        renamed: dict[str, str] = {}
        for node, label in zip(graph.nodes, node_names(graph), strict=True):
            if node in skip:
                continue
            if node.domain not in ("", "ai.onnx") or (node.op_type not in OPS and node.op_type not in _UNIT_OPS):
                raise unsupported(node)
            unit = self._unit(graph, node, skip, renamed)
            if unit is not None:
                path = _set_submodule(self, node.source.module if node.source else "", unit)
                self.unit_names[label] = path
                x = node.inputs[0]
                assert x is not None
                self._steps.append(_Step(node, (self._ref(x, taken),), (self._out(node.outputs[0], renamed),), path))
                continue
            ins = tuple(None if v is None else self._ref(v, taken) for v in node.inputs)
            outs = tuple(None if v is None else v.name for v in node.outputs)
            self._steps.append(_Step(node, ins, outs))
            for v in node.outputs:
                if (q := quant_type_of(v)) is not None and v is not None:
                    self._quant[v.name] = q

    @staticmethod
    def _out(v: Value | None, renamed: dict[str, str]) -> str | None:
        return None if v is None else renamed.get(v.name, v.name)

    def _ref(self, v: Value, taken: set[str]) -> str:
        """The environment key of `v`; constants are registered as buffers (fake-quantized when quantized)."""
        if not v.is_constant:
            return v.name
        if v.name in self._small:
            return "#" + v.name
        if v.name not in self._consts:
            arr = _const_array(v)
            if arr.dtype.kind in "iub" and arr.size <= _SMALL and quant_type_of(v) is None:
                self._small[v.name] = arr  # shape arithmetic: kept out of the graph's tensors (see ops.py)
                return "#" + v.name
            q = quant_type_of(v)
            if q is not None:
                arr = fake_quantize(arr, q)
            attr = _identifier(f"c_{v.name}", taken)
            t = torch.from_numpy(np.array(arr, copy=True))
            self.register_buffer(attr, t)
            self._consts[v.name] = attr
        return "@" + self._consts[v.name]

    def _unit(self, graph: Graph, node: Node, skip: set[Node], renamed: dict[str, str]) -> Unit | None:
        if node.op_type not in _UNIT_OPS or len(node.inputs) < 2:
            return None
        w, x = node.inputs[1], node.inputs[0]
        if w is None or x is None or not w.is_constant or x.is_constant:
            return None
        arr, qw = _const_array(w), quant_type_of(w)
        if arr.dtype != np.float32:
            return None
        if qw is not None and (qw.dtype is not DType.I8 or qw.granularity.kind is GranularityKind.PER_GROUP):
            return None
        bias_v = node.inputs[2] if len(node.inputs) > 2 else None
        bias = None if bias_v is None else _const_array(bias_v)
        if bias_v is not None and (not bias_v.is_constant or bias is None or bias.dtype != np.float32):
            return None
        if node.op_type == "Conv":
            if quant_type_of(bias_v) is not None:
                return None
            return Unit(node, "conv", self.flavor, arr, qw, bias)
        linear = _linear_weight(node, arr, qw)
        if linear is None or (bias is not None and (bias.ndim != 1 or quant_type_of(bias_v) is not None)):
            return None
        wt, qt = linear
        y = node.outputs[0]
        if node.op_type == "MatMul":
            fold = _bias_add(graph, node, wt.shape[0])
            if fold is not None:
                add, bias = fold
                skip.add(add)
                assert y is not None and add.outputs[0] is not None
                renamed[y.name] = add.outputs[0].name  # the linear computes the Add's output
                if (q := quant_type_of(add.outputs[0])) is not None:
                    self._quant[add.outputs[0].name] = q
        if y is not None and (q := quant_type_of(y)) is not None:
            self._quant[y.name] = q
        return Unit(node, "linear", self.flavor, wt, qt, bias)

    def _fake_quant(self, name: str, x: Any) -> Any:
        q = self._quant.get(name)
        if q is None or not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return x
        if self.observer is not None:
            self.observer(name, x, q)
        return self._activation(x, q)

    def _activation(self, x: torch.Tensor, q: QuantType) -> torch.Tensor:
        if q.dtype.is_float:
            return fp8_fake_quant(x, q)
        if q.granularity.kind is GranularityKind.PER_TENSOR and q.dtype in (DType.U8, DType.I8):
            return self.flavor.activation(x, q)
        return generic_fake_quant(x, q)

    def set_activation_type(self, name: str, q: QuantType) -> None:
        """Quantize the activation (or graph input) `name` as `q` (e.g. with a checkpoint's own scale)."""
        if name in self._input_names:
            self._input_quant[self._input_names.index(name)] = q
        elif name in self._quant:
            self._quant[name] = q
        else:
            raise SerializationError(f"%{name} is not a quantized activation of the generated module")

    def set_constant(self, name: str, value: torch.Tensor) -> None:
        """Replace the (fake-quantized) constant `name` the generated code reads, e.g. by a checkpoint's tensor."""
        attr = self._consts.get(name)
        if attr is None:
            raise SerializationError(f"%{name} is not a constant tensor of the generated module")
        self._buffers[attr] = value

    def _lookup(self, ref: str, env: dict[str, Any]) -> Any:
        if ref.startswith("@"):
            return getattr(self, ref[1:])
        if ref.startswith("#"):
            return self._small[ref[1:]]
        return env[ref]

    def run(self, *args: torch.Tensor) -> Any:
        env: dict[str, Any] = {}
        for name, x, q in zip(self._input_names, args, self._input_quant, strict=True):
            if q is not None and x.is_floating_point():
                if self.observer is not None:
                    self.observer(name, x, q)
                x = self._activation(x, q)
            env[name] = x
        for step in self._steps:
            xs = [None if r is None else self._lookup(r, env) for r in step.inputs]
            if step.unit is not None:
                outs = [self.get_submodule(step.unit)(as_tensor(xs[0]))]
            else:
                outs = OPS[step.node.op_type](step.node, xs)
            for out_name, out in zip(step.outputs, outs, strict=False):
                if out_name is not None:
                    env[out_name] = self._fake_quant(out_name, out)
        results = [as_tensor(env[n]) for n in self._output_names]
        return results[0] if len(results) == 1 else tuple(results)


_UNIT_OPS = frozenset({"Conv", "Gemm", "MatMul"})
_SMALL = 64
"""Integer constants up to this many elements stay numpy arrays (shape arithmetic), not buffers."""


def build_module(graph: Graph, flavor: QuantFlavor) -> nn.Module:
    """The generated module for a legalized `graph` (eval mode, no gradients), with `forward(<graph inputs>)`."""
    names = input_names(graph)
    body = f"def forward(self, {', '.join(names)}):\n    return self.run({', '.join(names)})\n"
    scope: dict[str, Any] = {}
    exec(compile(body, f"<quantir forward of {graph.name}>", "exec"), scope)
    cls = type("QuantirModule", (IRModule,), {"forward": scope["forward"]})
    module = cls(graph, flavor)
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


_SIZES = (2, 3, 5, 7, 11, 13)


def example_inputs(graph: Graph, sizes: dict[str, int] | None = None) -> tuple[tuple[torch.Tensor, ...], tuple]:
    """Example tensors for tracing the graph (symbolic dims take distinct sizes > 1, so tracing never specializes
    them to 0/1), and torch.export `dynamic_shapes` marking every symbolic dim `Dim.AUTO`."""
    sizes = dict(sizes or {})
    tensors: list[torch.Tensor] = []
    shapes: list[dict[int, Any] | None] = []
    for v in graph.inputs:
        t = v.type
        if not isinstance(t, TensorType) or t.shape is None:
            raise SerializationError(f"graph input %{v.name} has no known rank; a torch backend needs one to trace")
        dims, dyn = [], {}
        for i, d in enumerate(t.shape):
            if isinstance(d, int):
                dims.append(d)
            else:
                key = str(d)
                if key not in sizes:
                    sizes[key] = _SIZES[len(sizes) % len(_SIZES)]
                dims.append(sizes[key])
                dyn[i] = torch.export.Dim.AUTO(min=1)  # batch 1 allowed (export reports ranges from 2)
        dtype = torch_dtype(t.dtype, f"graph input %{v.name}")
        tensors.append(torch.zeros(dims, dtype=dtype) if not dtype.is_floating_point else torch.rand(dims, dtype=dtype))
        shapes.append(dyn or None)
    return tuple(tensors), tuple(shapes)
