"""Atomic file writes: write to a temporary file beside the target, fsync, then rename over it.

A failed write leaves the target as it was and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from quantir.ir.errors import SerializationError

__all__ = ["atomic_binary_file"]


@contextlib.contextmanager
def atomic_binary_file(target: Path) -> Iterator[BinaryIO]:
    """A binary file object whose contents replace `target` when the block ends without error."""
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise SerializationError(f"cannot write {target}: {e}") from e
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; the result gets ordinary permissions
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        raise SerializationError(f"cannot write {target}: {e}") from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
