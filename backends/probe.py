"""Run a fresh artifact once in a child process, so that a runtime crash (a segfault in a plugin, an abort, a hang)
becomes a `RuntimeCrashError` naming the runtime, its version and the artifact instead of killing quantir.

`probe(backend, artifact, feed)` is what the CLI calls before it verifies an artifact in-process. The child runs
`python -m quantir.backends.probe MODULE:LOADER ARTIFACT FEED.npz`: it imports the backend's loader (the `lazy`
target of `Backend.load`), loads the artifact and runs the feed once.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from quantir.backends.contract import Backend
from quantir.ir import QuantirError, RuntimeCrashError

__all__ = ["DEFAULT_TIMEOUT", "probe", "runtime_version"]

DEFAULT_TIMEOUT = 600.0
"""Seconds a child may take to load the artifact and run one feed before it counts as hung."""

_TAIL = 20
"""Lines of the child's stderr an error quotes."""


def runtime_version(backend: Backend) -> str:
    """`OpenVINO (CPU plugin) 2025.3.0`: the runtime with its installed version, where the backend names its package."""
    if not backend.runtime_package:
        return backend.runtime
    try:
        return f"{backend.runtime} {importlib.metadata.version(backend.runtime_package)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{backend.runtime} (package {backend.runtime_package!r} not installed)"


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def probe(backend: Backend, artifact: str | os.PathLike[str], feed: Mapping[str, np.ndarray], *,
          timeout: float = DEFAULT_TIMEOUT) -> None:  # fmt: skip
    """Load `artifact` with `backend.load` and run `feed` once, in a child process. Raises `RuntimeCrashError` if
    the child crashes, hangs past `timeout` seconds or fails; returns quietly when it ran. A backend whose loader
    is not a `lazy` import target cannot run in a child and is not probed."""
    target = getattr(backend.load, "target", None)
    if not isinstance(target, str):
        return
    folder = Path(artifact)
    who = f"{runtime_version(backend)} running the {backend.name} artifact {os.fspath(folder)!r}"
    with tempfile.TemporaryDirectory(prefix="quantir-probe-") as tmp:
        data = Path(tmp) / "feed.npz"
        np.savez(data, allow_pickle=False, **{k: np.asarray(v) for k, v in feed.items()})
        cmd = [sys.executable, "-m", "quantir.backends.probe", target, os.fspath(folder), os.fspath(data)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeCrashError(
                f"{who}: one inference did not finish in {timeout:.0f} s (run in a child process, which was "
                "stopped); the runtime hangs on this model"
            ) from None
    if done.returncode == 0:
        return
    tail = "\n".join(done.stderr.strip().splitlines()[-_TAIL:])
    detail = f"\n{tail}" if tail else ""
    if done.returncode == 2 and tail.startswith("error: "):
        raise RuntimeCrashError(f"{who}: the runtime refused the artifact: {tail.removeprefix('error: ')}")
    raise RuntimeCrashError(
        f"{who}: the runtime crashed on the first inference (the child process that ran it "
        f"{_describe(done.returncode)}). The artifact is valid for its format but this runtime version cannot run "
        f"it; convert to another target, or keep more of the model float (set_local) around the op that crashes"
        f"{detail}"
    )


def _child(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m quantir.backends.probe MODULE:LOADER ARTIFACT FEED.npz", file=sys.stderr)
        return 64
    target, artifact, data = argv
    module, _, name = target.partition(":")
    load = getattr(importlib.import_module(module), name)
    with np.load(data, allow_pickle=False) as npz:
        feed = {k: npz[k] for k in npz.files}
    try:
        runner = load(artifact)
        runner(feed)
    except QuantirError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the runtime's own exception types: reported by the parent with the runtime's name
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
