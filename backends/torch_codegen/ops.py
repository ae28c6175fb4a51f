"""ONNX operator semantics in torch: one function per IR op type, `fn(node, inputs) -> outputs`.

The functions run inside `torch.export` and `torch.jit.trace`, so they must trace: shapes are never read back from
tensor data. Shape arithmetic (`Shape -> Gather/Squeeze/Concat -> Reshape`, what the ONNX exporter writes for
`view(x.size(0), -1)`) runs on `Dims`, Python tuples of ints or SymInts, which become tensors only where an op
needs tensor data; a symbolic batch then stays symbolic in the exported program.

An op without a mapping is a `SerializationError` naming the op and node (`unsupported`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from quantir.ir import Node, SerializationError

__all__ = ["OPS", "Dims", "as_tensor", "onnx_dtype", "unsupported"]


class Dims(tuple):  # type: ignore[type-arg]
    """An int64 tensor of shape arithmetic, kept as Python ints/SymInts; `scalar` for a 0-d one."""

    scalar: bool = False

    @classmethod
    def of(cls, items: Sequence[Any], scalar: bool = False) -> Dims:
        d = cls(items)
        d.scalar = scalar
        return d


def as_tensor(v: Any) -> torch.Tensor:
    """A tensor for a value that may be `Dims` or a small constant (a numpy array)."""
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.array(v, copy=True))
    if isinstance(v, Dims):
        if not len(v):
            return torch.zeros(0, dtype=torch.int64)
        t = torch.stack([torch.as_tensor(x, dtype=torch.int64) for x in v])
        return t.reshape(()) if v.scalar else t
    return v  # type: ignore[no-any-return]


def _ints(v: Any) -> list[Any]:
    """A 1-d int list (ints or SymInts) from `Dims` or a small constant tensor."""
    if isinstance(v, Dims):
        return list(v)
    if isinstance(v, np.ndarray):
        return [int(x) for x in v.reshape(-1).tolist()]
    raise SerializationError(
        "a shape operand is computed from tensor data; the torch code generator needs shapes from Shape ops or "
        "constants (export the model with static shape arithmetic)"
    )


def _is_dims(*values: Any) -> bool:
    return any(isinstance(v, Dims) for v in values)


def _dims_ok(*values: Any) -> bool:
    """Every value is `Dims` or a small 0-/1-d int constant: shape arithmetic runs on Python ints."""
    return all(
        isinstance(v, Dims) or (isinstance(v, np.ndarray) and v.ndim <= 1 and v.dtype.kind in "iu") for v in values
    )


_ONNX_DTYPES: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
    9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16,
}  # fmt: skip


def onnx_dtype(code: int, node: Node) -> torch.dtype:
    if code not in _ONNX_DTYPES:
        raise SerializationError(f"{node.describe()}: ONNX tensor type {code} has no torch dtype here")
    return _ONNX_DTYPES[code]


def unsupported(node: Node) -> SerializationError:
    return SerializationError(
        f"{node.describe()}: the IR op {node.op_type!r} (domain {node.domain or 'ai.onnx'!r}) has no aten mapping "
        "in quantir's torch code generator, so this model cannot be emitted for a torch backend; use onnx_qdq or "
        "openvino for it"
    )


def _attr(node: Node, name: str, default: Any = None) -> Any:
    v = node.attr(name, default)
    return list(v) if isinstance(v, tuple) else v


Fn = Callable[[Node, list[Any]], list[Any]]
OPS: dict[str, Fn] = {}


def _op(*names: str) -> Callable[[Fn], Fn]:
    def register(fn: Fn) -> Fn:
        for n in names:
            OPS[n] = fn
        return fn

    return register


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Fn:
    return lambda node, xs: [fn(as_tensor(xs[0]))]


for _name, _fn in {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf, "Sqrt": torch.sqrt,
    "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg, "Abs": torch.abs, "Not": torch.logical_not,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Identity": lambda x: x,
    "Sin": torch.sin, "Cos": torch.cos,
}.items():  # fmt: skip
    OPS[_name] = _unary(_fn)


def _binary_dims(name: str, a: Any, b: Any) -> Dims:
    x, y = _ints(a), _ints(b)
    if len(x) == 1 and len(y) > 1:
        x = x * len(y)
    if len(y) == 1 and len(x) > 1:
        y = y * len(x)
    f = {"Add": lambda p, q: p + q, "Sub": lambda p, q: p - q, "Mul": lambda p, q: p * q,
         "Div": lambda p, q: p // q}[name]  # fmt: skip
    scalar = all(getattr(v, "scalar", False) or (isinstance(v, np.ndarray) and v.ndim == 0) for v in (a, b))
    return Dims.of([f(p, q) for p, q in zip(x, y, strict=True)], scalar=scalar)


_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow, "Equal": torch.eq, "Less": torch.lt,
    "LessOrEqual": torch.le, "Greater": torch.gt, "GreaterOrEqual": torch.ge, "And": torch.logical_and,
    "Or": torch.logical_or, "Xor": torch.logical_xor,
}  # fmt: skip


@_op(*_BINARY, "Div")
def _binary(node: Node, xs: list[Any]) -> list[Any]:
    a, b = xs
    if node.op_type in ("Add", "Sub", "Mul", "Div") and _dims_ok(a, b):
        return [_binary_dims(node.op_type, a, b)]
    a, b = as_tensor(a), as_tensor(b)
    if node.op_type == "Div":
        if a.is_floating_point() or b.is_floating_point():
            return [torch.div(a, b)]
        return [torch.div(a, b, rounding_mode="trunc")]
    if node.op_type == "Pow" and not b.is_floating_point():
        b = b.to(a.dtype)
    return [_BINARY[node.op_type](a, b)]


@_op("Max", "Min", "Sum")
def _variadic(node: Node, xs: list[Any]) -> list[Any]:
    f: Any = {"Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add}[node.op_type]
    out = as_tensor(xs[0])
    for x in xs[1:]:
        out = f(out, as_tensor(x))
    return [out]


@_op("Where")
def _where(node: Node, xs: list[Any]) -> list[Any]:
    c, a, b = (as_tensor(x) for x in xs)
    return [torch.where(c, a, b)]


@_op("Cast")
def _cast(node: Node, xs: list[Any]) -> list[Any]:
    dtype = onnx_dtype(int(node.attr("to")), node)  # type: ignore[arg-type]
    if isinstance(xs[0], Dims) and dtype in (torch.int64, torch.int32):
        return [xs[0]]
    return [as_tensor(xs[0]).to(dtype)]


@_op("Shape")
def _shape(node: Node, xs: list[Any]) -> list[Any]:
    x = as_tensor(xs[0])
    start, end = _attr(node, "start", 0), _attr(node, "end", None)
    return [Dims.of(list(x.shape)[start:end])]


@_op("Size")
def _size(node: Node, xs: list[Any]) -> list[Any]:
    return [Dims.of([as_tensor(xs[0]).numel()], scalar=True)]


def _axes(node: Node, xs: list[Any], index: int) -> list[int] | None:
    if len(xs) > index and xs[index] is not None:
        return [int(a) for a in _ints(xs[index])]
    a = _attr(node, "axes")
    return None if a is None else [int(x) for x in a]


@_op("Squeeze")
def _squeeze(node: Node, xs: list[Any]) -> list[Any]:
    axes = _axes(node, xs, 1)
    if isinstance(xs[0], Dims):
        items = list(xs[0])
        if axes is None or axes in ([0], [-1]):
            return [Dims.of(items, scalar=len(items) == 1)] if len(items) == 1 else [Dims.of(items)]
    x = as_tensor(xs[0])
    return [x.squeeze() if axes is None else x.squeeze(tuple(axes))]


@_op("Unsqueeze")
def _unsqueeze(node: Node, xs: list[Any]) -> list[Any]:
    axes = _axes(node, xs, 1) or []
    if isinstance(xs[0], Dims) and xs[0].scalar and axes in ([0], [-1]):
        return [Dims.of(list(xs[0]))]
    x = as_tensor(xs[0])
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return [x]


@_op("Reshape")
def _reshape(node: Node, xs: list[Any]) -> list[Any]:
    data, shape = xs
    target = _ints(shape)
    if isinstance(data, Dims):
        if target in ([-1], [1]) or (len(target) == 1 and target[0] == len(data)):
            return [Dims.of(list(data))]
        if target == [] and len(data) == 1:
            return [Dims.of(list(data), scalar=True)]
    x = as_tensor(data)
    if not _attr(node, "allowzero", 0):
        target = [x.shape[i] if isinstance(t, int) and t == 0 else t for i, t in enumerate(target)]
    return [x.reshape(target)]


@_op("Flatten")
def _flatten(node: Node, xs: list[Any]) -> list[Any]:
    x = as_tensor(xs[0])
    axis = _attr(node, "axis", 1) % (x.dim() + 1)
    if axis == 1:
        return [x.flatten(1) if x.dim() > 1 else x.reshape(x.shape[0], 1)]
    return [x.reshape(math.prod(x.shape[:axis]), -1)]


@_op("Concat")
def _concat(node: Node, xs: list[Any]) -> list[Any]:
    present = [x for x in xs if x is not None]
    if _dims_ok(*present):
        return [Dims.of([d for x in present for d in _ints(x)])]
    return [torch.cat([as_tensor(x) for x in present], dim=int(_attr(node, "axis", 0)))]


@_op("Gather")
def _gather(node: Node, xs: list[Any]) -> list[Any]:
    data, idx = xs
    axis = int(_attr(node, "axis", 0))
    if isinstance(data, Dims):
        items = list(data)
        picks = _ints(idx)
        scalar = (isinstance(idx, np.ndarray) and idx.ndim == 0) or getattr(idx, "scalar", False)
        return [Dims.of([items[int(i)] for i in picks], scalar=bool(scalar))]
    data, idx = as_tensor(data), as_tensor(idx)
    if axis == 0 and data.dim() == 2 and idx.dtype in (torch.int64, torch.int32) and idx.dim() >= 1:
        return [F.embedding(idx, data)]
    axis %= data.dim()
    return [data[(slice(None),) * axis + (idx,)]]


@_op("GatherElements")
def _gather_elements(node: Node, xs: list[Any]) -> list[Any]:
    data, idx = as_tensor(xs[0]), as_tensor(xs[1])
    return [torch.gather(data, int(_attr(node, "axis", 0)), idx.to(torch.int64))]


@_op("GatherND")
def _gather_nd(node: Node, xs: list[Any]) -> list[Any]:
    data, idx = as_tensor(xs[0]), as_tensor(xs[1])
    if _attr(node, "batch_dims", 0):
        raise unsupported(node)
    k = idx.shape[-1]
    return [data[tuple(idx[..., i] for i in range(int(k)))]]


@_op("Slice")
def _slice(node: Node, xs: list[Any]) -> list[Any]:
    data = xs[0]
    starts, ends = _ints(xs[1]), _ints(xs[2])
    n = len(starts)
    axes = _ints(xs[3]) if len(xs) > 3 and xs[3] is not None else list(range(n))
    steps = _ints(xs[4]) if len(xs) > 4 and xs[4] is not None else [1] * n
    if isinstance(data, Dims):
        items = list(data)
        return [Dims.of(items[slice(starts[0], ends[0], steps[0])])]
    x = as_tensor(data)
    index: list[Any] = [slice(None)] * x.dim()
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        if isinstance(st, int) and st < 0:
            raise unsupported(node)
        index[int(a) % x.dim()] = slice(s, e, st)
    return [x[tuple(index)]]


@_op("Expand")
def _expand(node: Node, xs: list[Any]) -> list[Any]:
    x = as_tensor(xs[0])
    shape = _ints(xs[1])
    out = torch.broadcast_shapes(tuple(x.shape), tuple(shape))
    return [x.expand(out)]


@_op("Tile")
def _tile(node: Node, xs: list[Any]) -> list[Any]:
    return [as_tensor(xs[0]).repeat(_ints(xs[1]))]


@_op("Transpose")
def _transpose(node: Node, xs: list[Any]) -> list[Any]:
    x = as_tensor(xs[0])
    perm = _attr(node, "perm") or list(reversed(range(x.dim())))
    return [x.permute(perm)]


@_op("Range")
def _range(node: Node, xs: list[Any]) -> list[Any]:
    if any(isinstance(x, torch.Tensor) for x in xs):
        raise SerializationError(f"{node.describe()}: Range bounds computed from tensor data have no torch lowering")
    start, limit, delta = (_ints(x)[0] for x in xs)
    dtype = as_tensor(xs[0]).dtype if isinstance(xs[0], np.ndarray) else torch.int64
    return [torch.arange(start, limit, delta, dtype=dtype)]


@_op("ConstantOfShape")
def _constant_of_shape(node: Node, xs: list[Any]) -> list[Any]:
    value = node.attr("value")
    fill, dtype = 0.0, torch.float32
    if value is not None and hasattr(value, "numpy"):
        arr = value.numpy()
        fill, dtype = arr.reshape(-1)[0].item(), torch.from_numpy(arr.reshape(-1)[:1].copy()).dtype
    return [torch.full(tuple(_ints(xs[0])), fill, dtype=dtype)]


@_op("Softmax", "LogSoftmax")
def _softmax(node: Node, xs: list[Any]) -> list[Any]:
    f = torch.softmax if node.op_type == "Softmax" else torch.log_softmax
    return [f(as_tensor(xs[0]), int(_attr(node, "axis", -1)))]


@_op("Gelu")
def _gelu(node: Node, xs: list[Any]) -> list[Any]:
    return [F.gelu(as_tensor(xs[0]), approximate=str(_attr(node, "approximate", "none")))]


@_op("LayerNormalization")
def _layer_norm(node: Node, xs: list[Any]) -> list[Any]:
    x = as_tensor(xs[0])
    axis = int(_attr(node, "axis", -1)) % x.dim()
    weight, bias = xs[1], xs[2] if len(xs) > 2 else None
    return [F.layer_norm(x, tuple(x.shape[axis:]), weight, bias, float(_attr(node, "epsilon", 1e-5)))]


def _reduce(node: Node, xs: list[Any], f: Callable[..., torch.Tensor]) -> list[Any]:
    x = as_tensor(xs[0])
    axes = _axes(node, xs, 1)
    keep = bool(_attr(node, "keepdims", 1))
    if not axes:
        if _attr(node, "noop_with_empty_axes", 0):
            return [x]
        axes = list(range(x.dim()))
    return [f(x, dim=tuple(axes), keepdim=keep)]


@_op("ReduceSum")
def _reduce_sum(node: Node, xs: list[Any]) -> list[Any]:
    return _reduce(node, xs, torch.sum)


@_op("ReduceMean")
def _reduce_mean(node: Node, xs: list[Any]) -> list[Any]:
    return _reduce(node, xs, torch.mean)


@_op("ReduceMax")
def _reduce_max(node: Node, xs: list[Any]) -> list[Any]:
    return _reduce(node, xs, torch.amax)


@_op("ReduceL2")
def _reduce_l2(node: Node, xs: list[Any]) -> list[Any]:
    return _reduce(node, xs, lambda x, dim, keepdim: torch.sqrt(torch.sum(x * x, dim=dim, keepdim=keepdim)))


@_op("Clip")
def _clip(node: Node, xs: list[Any]) -> list[Any]:
    x = as_tensor(xs[0])
    lo = xs[1] if len(xs) > 1 and xs[1] is not None else _attr(node, "min")
    hi = xs[2] if len(xs) > 2 and xs[2] is not None else _attr(node, "max")
    lo = as_tensor(lo) if isinstance(lo, Dims) else lo
    hi = as_tensor(hi) if isinstance(hi, Dims) else hi
    return [torch.clamp(x, lo, hi)]


def _pads(node: Node, spatial: int) -> tuple[list[int], list[int] | None]:
    """ONNX `pads` ([begin..., end...]) -> (symmetric padding, or None and the F.pad list)."""
    if _attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise SerializationError(f"{node.describe()}: auto_pad={_attr(node, 'auto_pad')!r} is not lowered to torch; "
                                 "re-export the model with explicit pads")  # fmt: skip
    pads = _attr(node, "pads") or [0] * (2 * spatial)
    begin, end = pads[:spatial], pads[spatial:]
    if begin == end:
        return list(begin), None
    return [0] * spatial, [p for b, e in zip(reversed(begin), reversed(end), strict=True) for p in (b, e)]


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def conv(node: Node, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    spatial = w.dim() - 2
    if spatial not in _CONV:
        raise unsupported(node)
    padding, explicit = _pads(node, spatial)
    if explicit is not None:
        x = F.pad(x, explicit)
    return _CONV[spatial](x, w, b, tuple(_attr(node, "strides") or [1] * spatial), tuple(padding),
                          tuple(_attr(node, "dilations") or [1] * spatial), int(_attr(node, "group", 1)))  # fmt: skip


@_op("MaxPool", "AveragePool")
def _pool(node: Node, xs: list[Any]) -> list[Any]:
    x = as_tensor(xs[0])
    kernel = _attr(node, "kernel_shape")
    spatial = len(kernel)
    padding, explicit = _pads(node, spatial)
    if explicit is not None:
        raise SerializationError(f"{node.describe()}: asymmetric pooling pads {_attr(node, 'pads')} are not "
                                 "lowered to torch")  # fmt: skip
    strides = tuple(_attr(node, "strides") or [1] * spatial)
    ceil = bool(_attr(node, "ceil_mode", 0))
    if node.op_type == "MaxPool":
        if len(node.outputs) > 1 and node.outputs[1] is not None:
            raise unsupported(node)
        dil = tuple(_attr(node, "dilations") or [1] * spatial)
        return [_MAXPOOL[spatial](x, tuple(kernel), strides, tuple(padding), dil, ceil_mode=ceil)]
    include = bool(_attr(node, "count_include_pad", 0))
    return [_AVGPOOL[spatial](x, tuple(kernel), strides, tuple(padding), ceil_mode=ceil, count_include_pad=include)]


@_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node: Node, xs: list[Any]) -> list[Any]:
    x = as_tensor(xs[0])
    dims = tuple(range(2, x.dim()))
    return [x.mean(dims, keepdim=True) if node.op_type == "GlobalAveragePool" else x.amax(dims, keepdim=True)]


@_op("Split")
def _split(node: Node, xs: list[Any]) -> list[Any]:
    x = as_tensor(xs[0])
    axis = int(_attr(node, "axis", 0))
    sizes = _ints(xs[1]) if len(xs) > 1 and xs[1] is not None else _attr(node, "split")
    n = len([o for o in node.outputs])
    if sizes is None:
        return list(torch.chunk(x, n, dim=axis))
    return list(torch.split(x, list(sizes), dim=axis))


@_op("Pad")
def _pad(node: Node, xs: list[Any]) -> list[Any]:
    x = as_tensor(xs[0])
    pads = _ints(xs[1])
    if len(xs) > 3 and xs[3] is not None:
        raise unsupported(node)
    value = float(as_tensor(xs[2]).item()) if len(xs) > 2 and xs[2] is not None else 0.0
    mode = str(_attr(node, "mode", "constant"))
    r = len(pads) // 2
    flat = [p for b, e in zip(reversed(pads[:r]), reversed(pads[r:]), strict=True) for p in (b, e)]
    return [F.pad(x, flat, mode=mode, value=value) if mode == "constant" else F.pad(x, flat, mode=mode)]


@_op("BatchNormalization")
def _batch_norm(node: Node, xs: list[Any]) -> list[Any]:
    x, scale, bias, mean, var = (as_tensor(v) for v in xs[:5])
    return [F.batch_norm(x, mean, var, scale, bias, False, 0.0, float(_attr(node, "epsilon", 1e-5)))]


@_op("LeakyRelu")
def _leaky(node: Node, xs: list[Any]) -> list[Any]:
    return [F.leaky_relu(as_tensor(xs[0]), float(_attr(node, "alpha", 0.01)))]


@_op("HardSigmoid")
def _hard_sigmoid(node: Node, xs: list[Any]) -> list[Any]:
    alpha, beta = float(_attr(node, "alpha", 0.2)), float(_attr(node, "beta", 0.5))
    return [torch.clamp(as_tensor(xs[0]) * alpha + beta, 0.0, 1.0)]


@_op("HardSwish")
def _hard_swish(node: Node, xs: list[Any]) -> list[Any]:
    return [F.hardswish(as_tensor(xs[0]))]


@_op("MatMul")
def _matmul(node: Node, xs: list[Any]) -> list[Any]:
    return [torch.matmul(as_tensor(xs[0]), as_tensor(xs[1]))]


@_op("Gemm")
def _gemm(node: Node, xs: list[Any]) -> list[Any]:
    a, b = as_tensor(xs[0]), as_tensor(xs[1])
    a = a.transpose(0, 1) if _attr(node, "transA", 0) else a
    b = b.transpose(0, 1) if _attr(node, "transB", 0) else b
    y = float(_attr(node, "alpha", 1.0)) * torch.matmul(a, b)
    if len(xs) > 2 and xs[2] is not None:
        y = y + float(_attr(node, "beta", 1.0)) * as_tensor(xs[2])
    return [y]


@_op("Conv")
def _conv(node: Node, xs: list[Any]) -> list[Any]:
    b = as_tensor(xs[2]) if len(xs) > 2 and xs[2] is not None else None
    return [conv(node, as_tensor(xs[0]), as_tensor(xs[1]), b)]
