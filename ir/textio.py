"""Saving and loading `.qir` files: the text form plus, when constants are large, a safetensors sidecar
beside it (`model.qir` + `model.safetensors`). Both are written atomically; loading maps no tensor data.
"""

from __future__ import annotations

import os
from pathlib import Path

from quantir.ir.atomic import atomic_binary_file
from quantir.ir.core import AttrKind, Graph
from quantir.ir.errors import SerializationError
from quantir.ir.printer import DEFAULT_INLINE_LIMIT, print_graph_with_tensors
from quantir.ir.sidecar import read_safetensors, write_safetensors
from quantir.ir.tensor import Tensor

__all__ = ["load", "save", "sidecar_path"]


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where the sidecar of the `.qir` file `path` lives: the same name with suffix `.safetensors`."""
    return Path(path).with_suffix(".safetensors")


def save(graph: Graph, path: str | os.PathLike[str], *, inline_limit: int = DEFAULT_INLINE_LIMIT) -> None:
    """Write `graph` to `path` and, if any tensor has more than `inline_limit` elements, its sidecar.

    The sidecar is written first, then the text, each through a temporary file and `os.replace`. Tensors of
    `graph` that were lazily read from the sidecar being replaced are pointed at the new file afterwards.
    """
    text, tensors = print_graph_with_tensors(graph, inline_limit=inline_limit)
    target = Path(path)
    if tensors:
        side = sidecar_path(target)
        retained = _backed_by(graph, side, exclude=tensors)
        to_write = dict(tensors)
        for t in retained:
            to_write[_unused_name(to_write, "__retained__")] = t
        locations = write_safetensors(side, to_write, metadata={"quantir.format": "qir sidecar"})
        same_file = os.path.abspath(side)
        for name, t in to_write.items():
            if t.external is not None and os.path.abspath(t.external.path) == same_file:
                t.external = locations[name]
    _write_text(target, text)


def load(path: str | os.PathLike[str]) -> Graph:
    """Read the graph saved at `path`; its sidecar tensors stay on disk until `.numpy()` is called."""
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SerializationError(f"cannot read {target}: {e}") from e
    side = sidecar_path(target)
    tensors = read_safetensors(side) if side.exists() else {}
    from quantir.ir.parser import parse  # lark loads only when text is read

    return parse(text, tensors=tensors, filename=str(target))


def _unused_name(taken: dict[str, Tensor], base: str) -> str:
    n = 0
    while f"{base}/{n}" in taken:
        n += 1
    return f"{base}/{n}"


def _backed_by(graph: Graph, sidecar: Path, exclude: dict[str, Tensor]) -> list[Tensor]:
    """Tensors of `graph` read lazily from `sidecar` that are not in `exclude`: they must survive its rewrite."""
    where = os.path.abspath(sidecar)
    written = {id(t) for t in exclude.values()}
    found: dict[int, Tensor] = {}
    candidates: list[object] = [v.const for v in graph.constants.values()]
    for node in graph.nodes:
        candidates += [a.value for a in node.attrs.values() if a.kind is AttrKind.TENSOR]
    for t in candidates:
        if not isinstance(t, Tensor) or t.external is None or id(t) in written:
            continue
        if os.path.abspath(t.external.path) == where:
            found[id(t)] = t
    return list(found.values())


def _write_text(target: Path, text: str) -> None:
    with atomic_binary_file(target) as f:
        f.write(text.encode("utf-8"))
