"""Weight-only MatMuls as `com.microsoft::MatMulNBits` (onnxruntime-quantization.md §5): the lowered graph's blocked
DequantizeLinear (a constant 4/8-bit weight grouped along K) -> MatMul pairs become one MatMulNBits node.

Layout (ORT's contrib op): B is uint8 [N, k_blocks, block_size·bits/8], each column's K values in blocks, two 4-bit
codes per byte with the even element in the low nibble; scales are float [N, k_blocks]; zero points are uint8
[N, ceil(k_blocks·bits/8)] (4-bit: two blocks per byte, even block low), absent when every code is symmetric around
2^(bits-1) (ORT's default zero point). Signed codes q are stored as q + 2^(bits-1). A last block shorter than
block_size (K not a multiple) is padded with the zero-point code, which dequantizes to 0.

`accuracy_level` is 0: the activations stay float, as the IR says (the weight is dequantized block by block into
an fp32 GEMM). Level 4 (int8 activations, ORT's choice when its optimizer fuses a DequantizeLinear into
MatMulNBits) changes the numerics and measured 1.2x slower than FP32 at batch 32 on MiniLM (AMX Xeon), level 0 1.05x.
"""

from __future__ import annotations

import numpy as np

from quantir.backends.legality import LOW_BIT_WEIGHTS
from quantir.backends.onnx_qdq.contrib import remove_unread, replace_with_contrib
from quantir.ir import Attr, DType, Graph, Node, Tensor, Value

__all__ = ["ACCURACY_LEVEL", "blockable", "pack_matmul_nbits", "to_matmul_nbits"]

ACCURACY_LEVEL = 0


def blockable(k: int, group_size: int) -> int | None:
    """The MatMulNBits block size for groups of `group_size` along K (a power of two >= 16), or None. A single group
    spanning all of K (per output channel) takes the next power of two: the padding dequantizes to 0."""
    if group_size >= 16 and group_size & (group_size - 1) == 0:
        return group_size
    if group_size >= k:
        return max(16, 1 << (k - 1).bit_length())
    return None


def _pack_rows(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes [..., n] -> bytes: 8-bit as is, 4-bit two per byte (even element in the low nibble)."""
    if bits == 8:
        return codes.astype(np.uint8)
    padded = codes if codes.shape[-1] % 2 == 0 else np.concatenate([codes, np.zeros_like(codes[..., :1])], axis=-1)
    return (padded[..., 0::2] | (padded[..., 1::2] << 4)).astype(np.uint8)


def pack_matmul_nbits(
    q: np.ndarray, zero_point: np.ndarray, dtype: DType, block: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """(B, zero_points) of MatMulNBits for integer codes `q` [K, N] and per-block zero points [k_blocks, N] of
    storage `dtype`; zero_points is None when every block uses ORT's default 2^(bits-1)."""
    bits = dtype.bits
    half = 1 << (bits - 1)
    shift = half if dtype in (DType.I4, DType.I8) else 0
    k, n = q.shape
    blocks = -(-k // block)
    zp = (np.asarray(zero_point, dtype=np.int64) + shift).astype(np.uint8)  # [k_blocks_ir, N] in unsigned codes
    codes = (q.astype(np.int64) + shift).astype(np.uint8).T  # [N, K]
    pad_code = np.repeat(zp[-1:].T, blocks * block - k, axis=1) if zp.shape[0] else np.zeros((n, 0), np.uint8)
    full = np.concatenate([codes, pad_code.astype(np.uint8)], axis=1).reshape(n, blocks, block)
    packed = _pack_rows(full, bits)
    zp_blocks = zp.T  # [N, k_blocks]
    if zp_blocks.shape[1] == 1 and blocks > 1:
        zp_blocks = np.repeat(zp_blocks, blocks, axis=1)
    if np.all(zp_blocks == half):
        return packed, None
    return packed, _pack_rows(zp_blocks, bits)


def _matmul_of(dq: Node) -> Node | None:
    out = dq.outputs[0]
    uses = out.uses() if out is not None else []
    if len(uses) != 1 or uses[0].idx != 1 or uses[0].node.op_type != "MatMul":
        return None
    return uses[0].node


def _weight_dq(dq: Node) -> tuple[np.ndarray, np.ndarray, np.ndarray, DType, int] | None:
    """(codes [K, N], scales and zero points [k_blocks, N], storage, group size) of a blocked DequantizeLinear of a
    constant 2-D 4/8-bit weight along axis 0, or None."""
    if dq.op_type != "DequantizeLinear" or len(dq.inputs) < 3 or not dq.attr("block_size", 0):
        return None
    w, s, z = dq.inputs[:3]
    if w is None or s is None or z is None or w.const is None or s.const is None or z.const is None:
        return None
    if w.const.dtype not in LOW_BIT_WEIGHTS or len(w.const.shape) != 2 or dq.attr("axis", 1) != 0:
        return None
    group = dq.attr("block_size", 0)
    assert isinstance(group, int)
    return w.const.numpy(), s.const.numpy(), z.const.numpy(), w.const.dtype, group


def to_matmul_nbits(graph: Graph) -> int:
    """Rewrite every blocked DequantizeLinear of a constant 4/8-bit weight that feeds one MatMul (the lowering of a
    weight-only unit) into MatMulNBits, in place; returns how many. A group size with no MatMulNBits block (not a
    power of two >= 16) keeps its DequantizeLinear -> MatMul, which ORT runs unfused."""
    count = 0
    for dq in list(graph.nodes):
        found = _weight_dq(dq)
        mm = _matmul_of(dq) if found is not None else None
        if found is None or mm is None:
            continue
        q, scale, zp, dtype, group = found
        k, n = q.shape
        block = blockable(k, group)
        if block is None or (group < k and block != group):
            continue
        blocks = -(-k // block)
        packed, zps = pack_matmul_nbits(q, zp, dtype, block)
        sc = np.asarray(scale, dtype=np.float32).T  # [N, k_blocks]
        if sc.shape[1] == 1 and blocks > 1:
            sc = np.repeat(sc, blocks, axis=1)
        base = mm.name or f"{dq.name}_MatMulNBits"
        b = graph.add_constant(f"{base}_B", Tensor.from_numpy(packed, DType.U8))
        s = graph.add_constant(f"{base}_scales", Tensor.from_numpy(np.ascontiguousarray(sc), DType.F32))
        inputs: list[Value | None] = [mm.inputs[0], b, s]
        if zps is not None:
            inputs.append(graph.add_constant(f"{base}_zero_points", Tensor.from_numpy(zps, DType.U8)))
        attrs = {"K": Attr.of(k), "N": Attr.of(n), "bits": Attr.of(dtype.bits), "block_size": Attr.of(block),
                 "accuracy_level": Attr.of(ACCURACY_LEVEL)}  # fmt: skip
        replace_with_contrib(graph, [mm], "MatMulNBits", inputs, attrs)
        remove_unread(graph, [dq])
        count += 1
    return count
