"""IPEX's qconf summary (the JSON `save_qconf_summary` writes and `load_qconf_summary` reads; ipex-and-pt2e.md §2)
built from a legalized IR graph, so `ipex.prepare(user_model, ...)` + `load_qconf_summary` applies quantir's
decisions and scales to the user's own model.

Two modes:
- synthesized (`build_qconf`): the layout IPEX writes with its default `bn_folding=True` (one module key `" "`),
  with IPEX's records replayed from the IR in execution order: Conv/Linear modules, relu, pooling, flatten,
  tensor add and activation matmul, with tensor ids handed out as IPEX's define-by-run tracing does (inputs first,
  then each recorded op's output). Checked field by field against a file real IPEX 2.8 wrote for the digits CNN
  (tests/backends/data); exact for CNN-style models, best effort for others (IPEX's own record list depends on
  Python-level calls the IR no longer shows, e.g. `x + y` vs `torch.add`).
- template-patch (`patch_qconf`): the exact mode where IPEX is installed. IPEX writes the template for the user's
  model (`prepare` + `save_qconf_summary`), and quantir's dtypes, scales and zero points are copied onto it by
  module path and op order.

Fallback follows INC (`check_cfg_and_qconfig`): `force_dtype: "torch.float32"` on the consumer's input and the same
dtype on the producer's output.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

from quantir.backends.legality import quant_type_of
from quantir.backends.onnx_proto.qdq import node_names
from quantir.ir import DType, GranularityKind, Graph, Node, QuantType, SerializationError, TensorType, Value
from quantir.ir.traits import weight_inputs

__all__ = ["FIELDS", "ROOT_KEY", "build_qconf", "check_qconf", "patch_qconf", "qconf_sidecar"]

ROOT_KEY = " "
"""IPEX's key of the root module (`get_fqn_valid_for_module_dict_key` turns "" into " ")."""

FIELDS: dict[str, frozenset[str]] = {
    "module": frozenset({"q_op_infos", "nonq_op_infos", "layer_output_infos"}),
    "q_op": frozenset({"op_type", "op_type_is_module", "fqn", "input_tensor_infos", "weight_tensor_infos",
                       "output_tensor_infos", "activation_observer", "weight_observer"}),
    "input": frozenset({"id", "orig_dtype", "inf_dtype", "force_dtype"}),
    "weight": frozenset({"orig_dtype", "inf_dtype"}),
    "output": frozenset({"id", "orig_dtype", "inf_dtype"}),
    "observer": frozenset({"name", "dtype", "qscheme", "reduce_range", "quant_min", "quant_max", "is_dynamic"}),
}  # fmt: skip
"""Required keys per record kind (ipex-and-pt2e.md §2, and what IPEX 2.8 writes): tensor infos also carry `scale`
and `zero_point` when an observer ran; `{}` stands for a non-tensor argument; histogram observers add `bins` and
per-channel ones `ch_axis`."""

_F32 = "torch.float32"
_QDTYPES = {DType.U8: "torch.quint8", DType.I8: "torch.qint8"}
_CONVS = ("Conv1d", "Conv2d", "Conv3d")


def _module_type(node: Node) -> str:
    return node.source.module_type if node.source is not None else ""


def _short(module_type: str) -> str:
    return module_type.rsplit(".", 1)[-1]


def _is_flatten(node: Node) -> bool:
    """A Reshape/Flatten to rank 2 that keeps dim 0 (what `torch.flatten(x, 1)` exports as)."""
    if node.op_type == "Flatten":
        return node.attr("axis", 1) == 1
    x, y = node.inputs[0], node.outputs[0]
    if node.op_type != "Reshape" or x is None or y is None:
        return False
    tx, ty = x.type, y.type
    if not isinstance(tx, TensorType) or not isinstance(ty, TensorType) or tx.shape is None or ty.shape is None:
        return False
    return len(tx.shape) > 2 and len(ty.shape) == 2 and tx.shape[0] == ty.shape[0]


def _record_kind(node: Node) -> tuple[str, bool, list[int]] | None:
    """(op_type string, is a module, the tensor-input slots IPEX records) of an IR node IPEX records, else None."""
    op, mtype = node.op_type, _module_type(node)
    consts = {i for i, v in enumerate(node.inputs) if v is not None and v.is_constant}
    if op == "Conv" and _short(mtype) in _CONVS and 1 in consts:
        return f"<class '{mtype}'>", True, [0]
    if op in ("Gemm", "MatMul") and _short(mtype) == "Linear" and 1 in weight_inputs(node) and 1 in consts:
        return f"<class '{mtype}'>", True, [0]
    if op == "Relu":
        return (f"<class '{mtype}'>", True, [0]) if _short(mtype) == "ReLU" else (
            "<built-in method relu of type object>", False, [0])  # fmt: skip
    if op in ("MaxPool", "AveragePool", "GlobalAveragePool"):
        if _short(mtype).endswith(("Pool1d", "Pool2d", "Pool3d")):
            return f"<class '{mtype}'>", True, [0]
        name = {"MaxPool": "max_pool2d", "AveragePool": "avg_pool2d", "GlobalAveragePool": "adaptive_avg_pool2d"}[op]
        return f"<built-in method {name} of type object>", False, [0]
    if _is_flatten(node):
        return "<built-in method flatten of type object>", False, [0, -1]  # -1: the start_dim argument, `{}`
    if op == "Add" and not consts and len(node.inputs) == 2:
        return "<method 'add' of 'torch._C.TensorBase' objects>", False, [0, 1]
    if op == "MatMul" and not consts:
        return "<built-in method matmul of type object>", False, [0, 1]
    return None


def _dtype(q: QuantType | None) -> str:
    return _QDTYPES.get(q.dtype, _F32) if q is not None else _F32


def _qparams(q: QuantType) -> dict[str, Any]:
    return {"scale": [float(s) for s in q.scale.reshape(-1)], "zero_point": [int(z) for z in q.zero_point.reshape(-1)]}


def _activation_observer(q: QuantType | None) -> dict[str, Any]:
    dtype = q.dtype if q is not None else DType.U8
    lo, hi = (q.qmin, q.qmax) if q is not None else DType.U8.int_range
    full = dtype.int_range
    name = "HistogramObserver" if q is not None and q.observer == "kl" else "MinMaxObserver"
    obs: dict[str, Any] = {"name": name}
    if name == "HistogramObserver":
        obs["bins"] = 2048
    sym = q is not None and dtype is DType.I8 and not q.zero_point.any()
    obs.update({"dtype": _QDTYPES.get(dtype, "torch.quint8"),
                "qscheme": "torch.per_tensor_symmetric" if sym else "torch.per_tensor_affine",
                "reduce_range": (hi - lo) < (full[1] - full[0]) // 2 + 1, "quant_min": lo, "quant_max": hi,
                "is_dynamic": False})  # fmt: skip
    return obs


def _weight_observer(q: QuantType | None) -> dict[str, Any]:
    lo, hi = (q.qmin, q.qmax) if q is not None else (-128, 127)
    per_channel = q is None or q.granularity.kind is GranularityKind.PER_CHANNEL
    obs: dict[str, Any] = {"name": "PerChannelMinMaxObserver" if per_channel else "MinMaxObserver"}
    if per_channel:
        obs["ch_axis"] = 0
    obs.update({"dtype": "torch.qint8",
                "qscheme": "torch.per_channel_symmetric" if per_channel else "torch.per_tensor_symmetric",
                "reduce_range": hi - lo < 200, "quant_min": lo, "quant_max": hi, "is_dynamic": False})  # fmt: skip
    return obs


class _Ids:
    """IPEX's tensor ids: graph inputs first, then each recorded op's outputs; values produced by ops IPEX does not
    record (Reshape, Dropout...) carry their first activation input's id."""

    def __init__(self, graph: Graph) -> None:
        self.ids: dict[Value, int] = {}
        for v in graph.inputs:
            self.ids[v] = len(self.ids)

    def of(self, v: Value) -> int:
        if v not in self.ids:
            p = v.producer
            src = next((i for i in (p.inputs if p is not None else ()) if i is not None and not i.is_constant), None)
            self.ids[v] = self.of(src) if src is not None else max(self.ids.values(), default=-1) + 1
        return self.ids[v]

    def new(self, v: Value) -> int:
        self.ids[v] = max(self.ids.values(), default=-1) + 1
        return self.ids[v]


def _records(graph: Graph, ids: _Ids | None = None) -> list[tuple[Node, str, dict[str, Any]]]:
    ids = ids or _Ids(graph)
    out: list[tuple[Node, str, dict[str, Any]]] = []
    for node, label in zip(graph.nodes, node_names(graph), strict=True):
        kind = _record_kind(node)
        if kind is None:
            continue
        op_type, is_module, slots = kind
        weight = node.inputs[1] if is_module and node.op_type != "Relu" and len(node.inputs) > 1 else None
        qw = quant_type_of(weight) if weight is not None and not _short(_module_type(node)).endswith(
            ("Pool1d", "Pool2d", "Pool3d", "ReLU")) else None  # fmt: skip
        inputs: list[dict[str, Any]] = []
        for slot in slots:
            v = node.inputs[slot] if slot >= 0 else None
            if v is None:
                inputs.append({})
                continue
            q = quant_type_of(v)
            quantized = q is not None and (weight is None or qw is not None)
            info: dict[str, Any] = {"id": ids.of(v), "orig_dtype": _F32, "inf_dtype": _dtype(q) if quantized else _F32}
            info["force_dtype"] = info["inf_dtype"]
            if quantized and q is not None:
                info.update(_qparams(q))
            inputs.append(info)
        weights = []
        if qw is not None and weight is not None:
            weights.append({"orig_dtype": _F32, "inf_dtype": "torch.qint8", **_qparams(qw)})
        elif weight is not None and node.op_type in ("Conv", "Gemm", "MatMul"):  # IPEX reads it even when float
            weights.append({"orig_dtype": _F32, "inf_dtype": _F32})
        outputs = []
        for y in node.outputs:
            if y is None:
                continue
            qy = quant_type_of(y)
            info = {"id": ids.new(y), "orig_dtype": _F32, "inf_dtype": _dtype(qy)}
            if qy is not None:
                info.update(_qparams(qy))
            outputs.append(info)
        qx = next((quant_type_of(node.inputs[s]) for s in slots if s >= 0 and node.inputs[s] is not None), None)
        record = {"op_type": op_type, "op_type_is_module": is_module,
                  "fqn": node.source.module if node.source is not None else "", "input_tensor_infos": inputs,
                  "weight_tensor_infos": weights, "output_tensor_infos": outputs,
                  "activation_observer": _activation_observer(qx), "weight_observer": _weight_observer(qw)}  # fmt: skip
        out.append((node, label, record))
    return out


def build_qconf(graph: Graph) -> dict[str, Any]:
    """The synthesized qconf summary of a legalized graph (see the module docstring)."""
    ids = _Ids(graph)
    records = _records(graph, ids)
    layer_outputs = [{"id": ids.of(v), "orig_dtype": _F32, "inf_dtype": _dtype(quant_type_of(v))}
                     for v in graph.outputs]  # fmt: skip
    return {ROOT_KEY: {"q_op_infos": {str(i): r for i, (_, _, r) in enumerate(records)}, "nonq_op_infos": {},
                       "layer_output_infos": layer_outputs}}  # fmt: skip


def qconf_sidecar(graph: Graph) -> dict[str, Any]:
    """Which IR node each synthesized record is: `{" ": {"q_op_infos": {"0": {"node": ..., "module": ...}}}}`."""
    return {ROOT_KEY: {"q_op_infos": {str(i): {"node": label, "op_type": node.op_type, "module": r["fqn"]}
                                      for i, (node, label, r) in enumerate(_records(graph))}}}  # fmt: skip


# ---- checking -------------------------------------------------------------------------------------------------------


def _missing(record: dict[str, Any], kind: str, where: str) -> list[str]:
    gone = sorted(FIELDS[kind] - set(record))
    return [f"{where}: missing {', '.join(gone)}"] if gone else []


def _check_info(info: dict[str, Any], kind: str, where: str, observer: dict[str, Any] | None) -> list[str]:
    if not info:
        return []
    problems = _missing(info, kind, where)
    quantized = info.get("inf_dtype") in _QDTYPES.values()
    if quantized and ("scale" not in info or "zero_point" not in info):
        return [*problems, f"{where}: quantized ({info['inf_dtype']}) but has no scale/zero_point"]
    scales, zps = info.get("scale", []), info.get("zero_point", [])
    if len(scales) != len(zps):
        problems.append(f"{where}: {len(scales)} scales but {len(zps)} zero points")
    if any(not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0 for s in scales):
        problems.append(f"{where}: scales must be finite and positive, got {scales[:4]}")
    if observer is not None and quantized:
        lo, hi = observer.get("quant_min"), observer.get("quant_max")
        bad = [z for z in zps if lo is not None and hi is not None and not lo <= z <= hi]
        if bad:
            problems.append(f"{where}: zero point {bad[0]} outside [{lo}, {hi}] of its observer")
    return problems


def check_qconf(doc: dict[str, Any], module_names: Iterable[str] | None = None) -> list[str]:
    """Problems of a qconf summary (empty when it is well-formed): required fields, quantized tensors with scales,
    zero points in range, every consumed id produced, producer/consumer dtypes agreeing (a consumer may force
    float: IPEX's own files do, e.g. flatten after a quint8 pool), module paths known."""
    names = None if module_names is None else set(module_names)
    problems: list[str] = []
    produced: dict[int, str] = {}
    consumed: list[tuple[int, str, str, str]] = []
    for key, module in doc.items():
        problems += _missing(module, "module", f"module {key!r}")
        for idx, op in (module.get("q_op_infos") or {}).items():
            where = f"{key!r} q_op_infos[{idx}]"
            problems += _missing(op, "q_op", where)
            for obs in ("activation_observer", "weight_observer"):
                problems += _missing(op.get(obs, {}), "observer", f"{where}.{obs}")
            for i, info in enumerate(op.get("input_tensor_infos", [])):
                problems += _check_info(info, "input", f"{where} input {i}", op.get("activation_observer"))
                if info:
                    consumed.append((info["id"], info.get("inf_dtype", ""), info.get("force_dtype", ""), where))
            for i, info in enumerate(op.get("weight_tensor_infos", [])):
                problems += _check_info(info, "weight", f"{where} weight {i}", op.get("weight_observer"))
                if info.get("zero_point") and any(info["zero_point"]):
                    problems.append(f"{where} weight {i}: symmetric qint8 weights need zero point 0")
            for i, info in enumerate(op.get("output_tensor_infos", [])):
                problems += _check_info(info, "output", f"{where} output {i}", op.get("activation_observer"))
                produced[info.get("id", -1)] = info.get("inf_dtype", "")
            if names is not None and op.get("op_type_is_module") and op.get("fqn") not in names:
                problems.append(f"{where}: fqn {op.get('fqn')!r} is not a module of the model")
    first_id = min((c[0] for c in consumed), default=0)
    for tid, inf, force, where in consumed:
        if tid not in produced and tid != first_id:
            problems.append(f"{where}: input id {tid} is produced by no recorded op and is not a model input")
        elif tid in produced and force != _F32 and produced[tid] not in (_F32, inf):
            problems.append(f"{where}: input id {tid} is {inf} but its producer writes {produced[tid]}")
    return problems


# ---- template-patch mode --------------------------------------------------------------------------------------------


def _slots(doc: dict[str, Any]) -> dict[tuple[str, bool, int], tuple[str, str]]:
    """(fqn, is module, occurrence) -> (module key, record index): how records of two files correspond."""
    seen: dict[tuple[str, bool], int] = {}
    out = {}
    for key, module in doc.items():
        for idx, op in (module.get("q_op_infos") or {}).items():
            base = (op["fqn"], bool(op["op_type_is_module"]))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out[(*base, n)] = (key, idx)
    return out


def patch_qconf(template: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """`template` (written by IPEX for the user's model) with quantir's dtypes, scales and zero points copied from
    `ours` (a `build_qconf` document), record by record: modules by path, functional ops by their parent's path
    and order. Ids, op types and observers stay IPEX's own. Raises `SerializationError` when a record of one file
    has no counterpart in the other."""
    patched = copy.deepcopy(template)
    mine, theirs = _slots(ours), _slots(patched)
    unmatched = sorted(set(mine) ^ set(theirs))
    if unmatched:
        raise SerializationError(f"the qconf template and quantir's records differ at {unmatched[:4]} "
                                 "(fqn, is module, occurrence); was the template written for this model?")  # fmt: skip
    for slot, (key, idx) in theirs.items():
        dst = patched[key]["q_op_infos"][idx]
        okey, oidx = mine[slot]
        src = ours[okey]["q_op_infos"][oidx]
        for part in ("input_tensor_infos", "output_tensor_infos", "weight_tensor_infos"):
            for d, s in zip(dst.get(part, []), src.get(part, []), strict=False):
                if not d or not s:
                    continue
                for k in ("inf_dtype", "force_dtype", "scale", "zero_point"):
                    if k in s:
                        d[k] = s[k]
                    elif k in ("scale", "zero_point"):
                        d.pop(k, None)
    return patched
