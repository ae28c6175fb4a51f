"""Calibration data in any form users have, as a stream of validated feed dicts.

Accepted: an iterable of dicts (input name -> array), of tuples/lists (positional inputs; a DataLoader's
`(inputs, label)` pairs are recognized when the model has one input), or of bare arrays; a torch
DataLoader (tensors are converted); a `.npz` path (arrays keyed by input name, first axis = samples).
Nothing is buffered: batches are validated and yielded one by one until `sampling_size` samples.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantir.ir import CalibrationError, Graph, TensorType

__all__ = ["DEFAULT_NPZ_BATCH", "InputSpec", "feeds", "fixed_batch", "input_specs", "npz_batch_size", "validate_batch"]


@dataclass(frozen=True, slots=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None


def input_specs(graph: Graph) -> list[InputSpec]:
    specs = []
    for v in graph.inputs:
        if not isinstance(v.type, TensorType):
            raise CalibrationError(f"graph input %{v.name} is not a tensor ({v.type}); it cannot be calibrated")
        specs.append(InputSpec(v.name, v.type.dtype.storage, v.type.shape))
    return specs


def _to_numpy(x: Any, where: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as e:
        raise CalibrationError(f"{where}: cannot convert {type(x).__name__} to an array ({e})") from None


def _as_feed(item: Any, specs: list[InputSpec], index: int) -> dict[str, np.ndarray]:
    where = f"calibration batch {index}"
    names = [s.name for s in specs]
    if isinstance(item, Mapping):
        unknown = sorted(set(map(str, item)) - set(names))
        missing = [n for n in names if n not in item]
        if unknown or missing:
            raise CalibrationError(
                f"{where}: input names do not match the model: unknown {unknown}, missing {missing}; "
                f"the model's inputs are {names}"
            )
        return {n: _to_numpy(item[n], f"{where}, input {n!r}") for n in names}
    if isinstance(item, (tuple, list)):
        values = list(item)
        if len(values) == 2 and len(specs) == 1 and not isinstance(values[0], (tuple, list, Mapping)):
            label = _to_numpy(values[1], where)
            first = _to_numpy(values[0], where)
            if label.ndim <= 1 and first.ndim > label.ndim:
                values = [values[0]]  # (inputs, label) from a DataLoader
        if len(values) == 1 and isinstance(values[0], Mapping):
            return _as_feed(values[0], specs, index)
        if len(values) != len(specs):
            raise CalibrationError(
                f"{where} has {len(values)} positional inputs; the model takes {len(specs)}: {names}"
            )
        return {s.name: _to_numpy(v, f"{where}, input {s.name!r}") for s, v in zip(specs, values, strict=True)}
    if len(specs) != 1:
        raise CalibrationError(f"{where} is a single array, but the model takes {len(specs)} inputs: {names}")
    return {specs[0].name: _to_numpy(item, where)}


def _check(feed: dict[str, np.ndarray], specs: list[InputSpec], index: int) -> dict[str, np.ndarray]:
    out = {}
    for s in specs:
        x = feed[s.name]
        where = f"calibration batch {index}, input {s.name!r}"
        if s.shape is not None:
            if x.ndim == len(s.shape) - 1:
                x = x[None, ...]  # a single sample: add the batch axis
            if x.ndim != len(s.shape):
                raise CalibrationError(f"{where} has shape {list(x.shape)}; the model expects rank {len(s.shape)} "
                                       f"{_shape_text(s.shape)}")  # fmt: skip
            for axis, (got, want) in enumerate(zip(x.shape, s.shape, strict=True)):
                if isinstance(want, int) and got != want:
                    raise CalibrationError(f"{where} has shape {list(x.shape)}; the model expects "
                                           f"{_shape_text(s.shape)} (axis {axis}: {got} vs {want})")  # fmt: skip
        if x.dtype != s.dtype:
            if x.dtype.kind in "fiub" and s.dtype.kind in "fiub":
                x = x.astype(s.dtype)
            else:
                raise CalibrationError(f"{where} has dtype {x.dtype}; the model expects {s.dtype}")
        if x.dtype.kind == "f":
            bad = int(np.count_nonzero(~np.isfinite(x)))
            if bad:
                raise CalibrationError(f"{where} contains {bad} NaN/Inf values; calibration data must be finite")
        out[s.name] = np.ascontiguousarray(x)
    return out


def validate_batch(item: Any, graph: Graph, index: int = 0) -> dict[str, np.ndarray]:
    """One batch (dict, tuple or array) as a validated feed dict for `graph`."""
    specs = input_specs(graph)
    return _check(_as_feed(item, specs, index), specs, index)


def _shape_text(shape: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


DEFAULT_NPZ_BATCH = 32
"""Samples per batch cut from an .npz, for a model whose batch dimension is not fixed."""


def fixed_batch(specs: list[InputSpec]) -> int | None:
    """The batch size every input fixes on its first axis (None: some input leaves it free); inputs that fix
    different sizes are a `CalibrationError`."""
    sizes = {s.name: s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
    if not sizes or len(sizes) < len(specs):
        return None
    if len(set(sizes.values())) > 1:
        raise CalibrationError(f"the model's inputs fix different batch sizes on their first axis: {sizes}")
    return next(iter(sizes.values()))


def npz_batch_size(specs: list[InputSpec], requested: int | None) -> int:
    """How many samples each batch cut from an .npz holds: `requested`, else the model's fixed batch, else 32."""
    fixed = fixed_batch(specs)
    if requested is not None:
        if requested < 1:
            raise CalibrationError(f"the calibration batch size must be at least 1, got {requested}")
        if fixed is not None and requested != fixed:
            raise CalibrationError(f"batch size {requested} was asked, but the model's inputs fix a batch of "
                                   f"{fixed} on their first axis; use {fixed}")  # fmt: skip
        return requested
    return fixed if fixed is not None else DEFAULT_NPZ_BATCH


def _npz_batches(
    path: Path, specs: list[InputSpec], batch_size: int, *, whole: bool
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `batch_size` samples; `whole`: only full batches (a fixed-batch model takes no other size)."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CalibrationError(f"cannot read calibration data {path}: {e}") from None
    names = [s.name for s in specs]
    if len(specs) == 1 and specs[0].name not in data.files and len(data.files) == 1:
        arrays = {specs[0].name: data[data.files[0]]}
    else:
        missing = [n for n in names if n not in data.files]
        if missing:
            raise CalibrationError(f"{path} lacks arrays for inputs {missing}; it has {data.files}, "
                                   f"the model's inputs are {names}")  # fmt: skip
        arrays = {n: data[n] for n in names}
    counts = {n: a.shape[0] if a.ndim else 0 for n, a in arrays.items()}
    if len(set(counts.values())) > 1:
        raise CalibrationError(f"{path}: inputs have different sample counts (first axis): {counts}")
    total = next(iter(counts.values()))
    if whole and total < batch_size:
        raise CalibrationError(f"{path} holds {total} samples, but the model's inputs fix a batch of {batch_size}")
    end = total - total % batch_size if whole else total
    for start in range(0, end, batch_size):
        yield {n: a[start : start + batch_size] for n, a in arrays.items()}


def feeds(
    data: Any, graph: Graph, *, sampling_size: int = 100, batch_size: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Validated feed dicts from `data`, stopping once `sampling_size` samples (first-axis rows) were yielded.

    An .npz is cut into batches of `batch_size` samples (default: the batch the model's inputs fix, else 32). A
    model with a fixed batch only ever gets whole batches: the last one is never cut short.
    Raises CalibrationError on empty data, NaN/Inf, wrong input names, shapes or dtypes.
    """
    specs = input_specs(graph)
    fixed = fixed_batch(specs)
    if sampling_size < 1:
        raise CalibrationError(f"sampling_size must be at least 1, got {sampling_size}")
    source: Iterable[Any]
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.suffix != ".npz":
            raise CalibrationError(
                f"calibration data file {path} must be an .npz archive of arrays keyed by input name"
            )
        source = _npz_batches(path, specs, npz_batch_size(specs, batch_size), whole=fixed is not None)
    elif isinstance(data, (Mapping, np.ndarray)):
        source = [data]
    elif data is None:
        raise CalibrationError("no calibration data was given")
    else:
        try:
            source = iter(data)
        except TypeError:
            raise CalibrationError(f"calibration data of type {type(data).__name__} is not iterable") from None
    seen = 0
    count = 0
    for index, item in enumerate(source):
        feed = _check(_as_feed(item, specs, index), specs, index)
        rows = next(iter(feed.values())).shape[0] if feed and next(iter(feed.values())).ndim else 1
        if rows == 0:
            raise CalibrationError(f"calibration batch {index} has 0 samples (its first axis is empty)")
        if seen + rows > sampling_size and rows > 1 and fixed is None:
            take = sampling_size - seen
            feed = {k: v[:take] for k, v in feed.items()}
            rows = take
        yield feed
        seen += rows
        count += 1
        if seen >= sampling_size:
            break
    if count == 0:
        raise CalibrationError("the calibration data is empty: it yielded no batches")
