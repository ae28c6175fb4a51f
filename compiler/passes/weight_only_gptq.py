"""`weight-only-gptq`: GPTQ (Frantar et al.; INC's `GPTQConfig`). Each MatMul/Gemm weight is quantized column by
column along its input channels, and every column's rounding error is spread over the columns not yet quantized
through the inverse Hessian of the layer's calibration inputs, H = 2/n Σ xᵀx (`HessianObserver`, streamed: memory is
K² per layer input, never the samples).

Per layer, with W the [out, in] weight: H += percdamp · mean(diag H) · I; dead inputs (diag 0) are zeroed; with
`act_order` columns go in order of decreasing diag H (static groups then, since a group's scale must cover
consecutive input channels to be one `per_group` type); U = chol(H⁻¹)ᵀ (upper); for each block of `block_size`
columns and each column j in it: a new group's grid comes from the current (error-updated) weights of that group
(INC's RTN formulas, `compiler.qparams.weight_only`), q_j = fakequant(w_j), err = (w_j - q_j) / U_jj,
w_{j+1..} -= err · U_{j, j+1..}; the block's errors then update the columns after it.

The result is a weight-only `QuantType` per group along K whose constant is replaced by the GPTQ weights, which lie
exactly on that grid, so every backend emits the GPTQ codes unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from quantir.backends.registry import DEFAULT_BACKEND, get_backend
from quantir.compiler.config.resolve import FieldResolution
from quantir.compiler.config.weight_only_config import GPTQConfig, weight_bits
from quantir.compiler.pass_manager import PassContext, PassResult, register_pass
from quantir.compiler.passes.weight_only_rtn import WeightOnlyRTN
from quantir.compiler.qparams.weight_only import rtn_qtype
from quantir.ir import ConfigError, Granularity, Graph, Node, QuantType, Tensor

__all__ = ["WeightOnlyGPTQ", "layer_inputs", "gptq_quantize"]


def layer_inputs(graph: Graph) -> list[str]:
    """The inputs whose statistics GPTQ and AWQ need (Hessian, mean |x|): the data input of every MatMul/Gemm with a
    constant 2-D weight."""
    names = []
    for node in graph.nodes:
        x = node.inputs[0] if node.inputs else None
        w = node.inputs[1] if len(node.inputs) > 1 else None
        if node.op_type in ("MatMul", "Gemm") and x is not None and x.const is None and w is not None and (
            w.const is not None and len(w.const.shape) == 2):  # fmt: skip
            names.append(x.name)
    return list(dict.fromkeys(names))


def _column_grid(w: np.ndarray, *, bits: int, sym: bool, full_range: bool) -> QuantType:
    """The RTN grid of a group of weights `w` [in, out]: one scale and zero point per output channel."""
    return rtn_qtype(w, axis=0, group_size=w.shape[0], bits=bits, sym=sym, full_range=full_range)


def _fake(col: np.ndarray, grid: QuantType) -> np.ndarray:
    s, z = grid.scale.reshape(-1).astype(np.float64), grid.zero_point.reshape(-1).astype(np.float64)
    return (np.clip(np.rint(col / s) + z, grid.qmin, grid.qmax) - z) * s


def gptq_quantize(
    w: np.ndarray,
    h: np.ndarray,
    *,
    bits: int,
    sym: bool,
    group_size: int,
    full_range: bool = False,
    percdamp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
) -> tuple[np.ndarray, QuantType]:
    """GPTQ of a [K, N] weight (a MatMul's B) with the Hessian `h` [K, K] of its inputs: (the quantized weights
    [K, N], on the grid of) the per-group weight-only type along K."""
    k, n = w.shape
    group = k if group_size <= 0 or group_size >= k else group_size
    W = np.array(w, dtype=np.float64).T  # [N, K]: one row per output channel
    H = np.array(h, dtype=np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    groups = -(-k // group)
    grids: list[QuantType | None] = [None] * groups
    if act_order:  # static groups: every grid from the weights before any update
        for g in range(groups):
            grids[g] = _column_grid(W[:, g * group : (g + 1) * group].T, bits=bits, sym=sym, full_range=full_range)
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(k)
    W, H = W[:, perm], H[np.ix_(perm, perm)]
    H[np.diag_indices(k)] += percdamp * float(np.mean(np.diag(H)))
    try:
        L = np.linalg.cholesky(H)
        Hinv = np.linalg.inv(L).T @ np.linalg.inv(L)
        U = np.linalg.cholesky(Hinv).T
    except np.linalg.LinAlgError as e:
        raise ConfigError(f"GPTQ: the layer's Hessian is not positive definite even with percdamp={percdamp}; "
                          "raise percdamp (e.g. 0.1) or use more calibration data") from e  # fmt: skip
    Q = np.zeros_like(W)
    for b0 in range(0, k, block_size):
        b1 = min(b0 + block_size, k)
        W1, Err = W[:, b0:b1].copy(), np.zeros((n, b1 - b0))
        for j in range(b1 - b0):
            col = int(perm[b0 + j])
            g = col // group
            if grids[g] is None:  # the group's first column: its grid from W as the reference implementation
                # reads it (updated by the blocks before this one, not yet by this block's columns)
                grids[g] = _column_grid(W[:, b0 + j : b0 + j + group].T, bits=bits, sym=sym, full_range=full_range)
            grid = grids[g]
            assert grid is not None
            q = _fake(W1[:, j], grid)
            Q[:, b0 + j] = q
            err = (W1[:, j] - q) / U[b0 + j, b0 + j]
            W1[:, j:] -= np.outer(err, U[b0 + j, b0 + j : b1])
            Err[:, j] = err
        W[:, b1:] -= Err @ U[b0:b1, b1:]
    Q = Q[:, np.argsort(perm)].T  # back to natural order, [K, N]
    first = grids[0]
    assert first is not None and all(gr is not None for gr in grids)
    scale = np.concatenate([gr.scale.reshape(1, n) for gr in grids if gr is not None], axis=0)
    zero = np.concatenate([gr.zero_point.reshape(1, n) for gr in grids if gr is not None], axis=0)
    qtype = QuantType(first.dtype, first.scheme, Granularity.per_group(0, group), scale, zero, first.qmin,
                      first.qmax, "gptq")  # fmt: skip
    return Q.astype(np.float32), qtype


@register_pass
@dataclass(frozen=True, slots=True)
class WeightOnlyGPTQ:
    """GPTQ over the Hessians calibration collected (`ctx.hessians`, by input value name); the op rules, checks and
    decisions are RTN's (`WeightOnlyRTN`), only the weight math differs."""

    name: ClassVar[str] = "weight-only-gptq"
    config: GPTQConfig
    backend: str = DEFAULT_BACKEND

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        cfg = self.config
        if cfg.act_order and not cfg.static_groups and cfg.group_size not in (-1,):
            raise ConfigError("GPTQConfig(act_order=True) needs static_groups=True with group_size != -1: a group's "
                              "scale must cover consecutive input channels to be one per-group type")  # fmt: skip
        if cfg.true_sequential:
            raise ConfigError("GPTQConfig.true_sequential=True is not implemented: the Hessians come from the float "
                              "model in one calibration pass; use true_sequential=False")  # fmt: skip
        hessians = ctx.hessians

        def quantize(node: Node, res: FieldResolution, data: np.ndarray, axis: int) -> QuantType:
            x = node.inputs[0]
            w = node.inputs[1]
            assert x is not None and w is not None
            h = hessians.get(x.name)
            if h is None:
                raise ConfigError(f"op {node.name!r}: GPTQ needs calibration data (the Hessian of %{x.name}); "
                                  "prepare with the GPTQConfig and call the prepared model with data")
            k_axis = 0 if node.op_type == "MatMul" or not node.attr("transB", 0) else 1
            if axis != k_axis:
                raise ConfigError(f"op {node.name!r}: GPTQ groups the input channels (group_dim=1)")
            v = res.values
            bits = weight_bits(v)
            group = v["group_size"]
            assert isinstance(group, int)
            q_weights, qtype = gptq_quantize(
                data if k_axis == 0 else data.T, h, bits=bits, sym=bool(v["use_sym"]), group_size=group,
                full_range=bool(v["use_full_range"]), percdamp=cfg.percdamp, block_size=cfg.block_size,
                act_order=cfg.act_order,
            )  # fmt: skip
            if k_axis == 1:  # Gemm with transB: the weight is [N, K]
                q_weights = np.ascontiguousarray(q_weights.T)
                g = qtype.granularity.group_size or 1
                qtype = QuantType(qtype.dtype, qtype.scheme, Granularity.per_group(1, g), qtype.scale.T,
                                  qtype.zero_point.T, qtype.qmin, qtype.qmax, qtype.observer)  # fmt: skip
            assert w.const is not None
            w.const = Tensor.from_numpy(q_weights.astype(np.float32), w.const.dtype)
            return qtype

        rtn = WeightOnlyRTN(config=cfg, backend=self.backend, weight_math=quantize, algorithm="GPTQ")
        result = rtn.run(graph, ctx)
        ctx.recipes[-1] = f"weight-only GPTQ for {get_backend(self.backend).name} from {len(hessians)} Hessian(s)"
        return result
