"""The artifact folder every backend writes: an IR hash for the manifest, the manifest reader, and the atomic write.

An artifact is assembled under a temporary name next to its destination and renamed into place at the end, so a
reader never sees a half-written one; an existing folder is replaced only when it is empty or a previous artifact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantir.ir import Graph, QuantType, SerializationError
from quantir.ir.printer import print_graph_with_tensors

__all__ = [
    "MANIFEST_FILE", "SCHEMA", "check_destination", "ir_sha256", "manifest_file", "manifest_text",
    "output_quantization", "read_manifest", "write_artifact",
]  # fmt: skip

MANIFEST_FILE = "quantir.json"
SCHEMA = "quantir.artifact/1"
"""Marks a folder as a quantir artifact, which `emit` may replace."""


def ir_sha256(graph: Graph) -> str:
    """A stable hash of the IR: its canonical text plus the bytes of every tensor the text references by name."""
    text, tensors = print_graph_with_tensors(graph)
    h = hashlib.sha256(text.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\n@{name}:{t.dtype}{list(t.shape)}\n".encode())
        for chunk in t.iter_bytes():
            h.update(chunk)
    return h.hexdigest()


def output_quantization(graph: Graph) -> dict[str, dict[str, Any]]:
    """Per graph output: whether it is quantized, and its dtype, scale and zero point when it is (for verify)."""
    result: dict[str, dict[str, Any]] = {}
    for v in graph.outputs:
        q = v.quant
        if isinstance(q, QuantType):
            result[v.name] = {"quantized": True, "dtype": q.dtype.value, "scale": q.scale.reshape(-1).tolist(),
                              "zero_point": q.zero_point.reshape(-1).tolist()}  # fmt: skip
        else:
            result[v.name] = {"quantized": False}
    return result


def read_manifest(artifact_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of a quantir artifact folder, or None when the folder is not one."""
    path = Path(artifact_dir) / MANIFEST_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not str(doc.get("schema", "")).startswith("quantir.artifact/"):
        return None
    return doc


def manifest_file(artifact_dir: str | os.PathLike[str], key: str, default: str) -> Path:
    """The file the artifact's manifest names under `key` (e.g. "model", "reference"), or `default`."""
    folder = Path(artifact_dir)
    return folder / str((read_manifest(folder) or {}).get(key, default))


def check_destination(out: Path) -> None:
    """Refuse a destination that is not a folder, or a non-empty folder that holds no quantir artifact."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise SerializationError(f"cannot write the artifact to {os.fspath(out)!r}: it exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and read_manifest(out) is None:
        raise SerializationError(
            f"refusing to replace {os.fspath(out)!r}: the folder is not empty and holds no quantir artifact "
            f"({MANIFEST_FILE} with schema {SCHEMA!r}); choose an empty or new folder"
        )


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; a previous artifact (or empty folder) there is moved aside first, then removed."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
    os.rename(out, old / "artifact")
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old / "artifact", out)  # put the previous artifact back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def manifest_text(doc: dict[str, Any], out: Path) -> str:
    """`doc` as indented JSON (objects with a `to_json()`, such as a `LegalizeReport`, as its result); a
    `SerializationError` naming `out` when it is not serializable."""

    def as_json(value: Any) -> Any:
        to_json = getattr(value, "to_json", None)
        if to_json is None:
            raise TypeError(f"{type(value).__name__} is not JSON serializable")
        return to_json()

    try:
        return json.dumps(doc, indent=2, allow_nan=False, default=as_json) + "\n"
    except (TypeError, ValueError) as e:
        raise SerializationError(f"the manifest for {os.fspath(out)!r} is not JSON-serializable: {e}") from e


def write_artifact(out: Path, write: Callable[[Path], None], manifest: str | Callable[[], str]) -> Path:
    """Build the artifact in a temporary folder next to `out` (`write(tmp)` writes the model files, then the
    manifest text (or what `manifest()` returns once `write` ran) is written and synced), make it world-readable,
    and rename it into place.

    OSErrors become `SerializationError`s; the temporary folder is removed whatever happens.
    """
    check_destination(out)
    try:
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as e:
        raise SerializationError(f"cannot write the artifact {os.fspath(out)!r}: {e}") from e
    try:
        write(tmp)
        with open(tmp / MANIFEST_FILE, "w", encoding="utf-8") as f:
            f.write(manifest() if callable(manifest) else manifest)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp (and mkstemp) create private entries; an artifact is shared
        for entry in tmp.iterdir():
            os.chmod(entry, 0o755 if entry.is_dir() else 0o644)
        check_destination(out)
        _swap_into_place(tmp, out)
    except OSError as e:
        raise SerializationError(f"cannot write the artifact {os.fspath(out)!r}: {e}") from e
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                shutil.rmtree(tmp)
    return out
