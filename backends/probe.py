"""Run a fresh artifact once in a child process, so that a runtime crash (a segfault in a plugin, an abort, a hang)
becomes a `RuntimeCrashError` naming the runtime, its version and the artifact instead of killing quantir.

`ProbeWorker.run(backend, artifact, feed)` is what the CLI calls before it verifies an artifact in-process (`probe`
for a one-off). The child, `python -m quantir.backends.probe --serve`, imports the backend's loader (the `lazy`
target of `Backend.load`), loads the artifact and runs the feed once per request.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

import numpy as np

from quantir.backends.contract import Backend
from quantir.ir import QuantirError, RuntimeCrashError

__all__ = ["DEFAULT_TIMEOUT", "ProbeWorker", "probe", "runtime_version"]

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


class ProbeWorker:
    """A child process that loads and runs artifacts on request, one at a time, started before the artifact exists
    so that its interpreter start and runtime imports overlap the conversion (`quantir convert` starts one first).

    Protocol: JSON lines on the child's stdin (`{"preload": TARGET}`, `{"run": TARGET, "artifact": DIR, "feed": NPZ}`),
    one JSON reply per run on a private descriptor (the child's stdout goes to its stderr, so a runtime that prints
    cannot corrupt a reply). A child that dies or hangs is replaced by a fresh one on the next request.
    """

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="quantir-probe-")
        self._stderr_path = Path(self._tmp.name) / "stderr.txt"
        self._proc: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[str | None] = queue.Queue()
        self._runs = 0

    def __enter__(self) -> ProbeWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _child(self) -> subprocess.Popen[str]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._replies = queue.Queue()
        with open(self._stderr_path, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "quantir.backends.probe", "--serve"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
            )  # fmt: skip
        replies, out = self._replies, proc.stdout
        assert out is not None

        def read() -> None:
            for line in out:
                replies.put(line)
            replies.put(None)

        threading.Thread(target=read, daemon=True).start()
        self._proc = proc
        return proc

    def _send(self, message: dict[str, str]) -> bool:
        proc = self._child()
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()
        except OSError:  # the child died before reading (its exit is reported by the run that waits on it)
            return False
        return True

    def start(self) -> None:
        """Start the child now (else the first request starts it)."""
        self._child()

    def preload(self, backend: Backend) -> None:
        """Import `backend`'s loader in the child now, while the parent converts."""
        target = getattr(backend.load, "target", None)
        if isinstance(target, str):
            self._send({"preload": target})

    def run(self, backend: Backend, artifact: str | os.PathLike[str], feed: Mapping[str, np.ndarray], *,
            timeout: float = DEFAULT_TIMEOUT) -> None:  # fmt: skip
        """Load `artifact` with `backend.load` and run `feed` once in the child. Raises `RuntimeCrashError` if the
        child crashes, hangs past `timeout` seconds or fails; returns quietly when it ran. A backend whose loader
        is not a `lazy` import target cannot run in a child and is not probed."""
        target = getattr(backend.load, "target", None)
        if not isinstance(target, str):
            return
        who = f"{runtime_version(backend)} running the {backend.name} artifact {os.fspath(artifact)!r}"
        self._runs += 1
        data = Path(self._tmp.name) / f"feed{self._runs}.npz"
        np.savez(data, allow_pickle=False, **{k: np.asarray(v) for k, v in feed.items()})
        try:
            self._send({"run": target, "artifact": os.fspath(artifact), "feed": os.fspath(data)})
            try:
                reply = self._replies.get(timeout=timeout)
            except queue.Empty:
                self._stop()
                raise RuntimeCrashError(
                    f"{who}: one inference did not finish in {timeout:.0f} s (run in a child process, which was "
                    "stopped); the runtime hangs on this model"
                ) from None
        finally:
            data.unlink(missing_ok=True)
        if reply is not None:
            error = json.loads(reply).get("error")
            if error is None:
                return
            raise RuntimeCrashError(f"{who}: the runtime refused the artifact: {error}")
        code = self._stop()
        tail = "\n".join(self._stderr_path.read_text(errors="replace").strip().splitlines()[-_TAIL:])
        detail = f"\n{tail}" if tail else ""
        raise RuntimeCrashError(
            f"{who}: the runtime crashed on the first inference (the child process that ran it "
            f"{_describe(code)}). The artifact is valid for its format but this runtime version cannot run "
            f"it; convert to another target, or keep more of the model float (set_local) around the op that crashes"
            f"{detail}"
        )

    def _stop(self) -> int:
        """End the child (a request it may be running is abandoned) and return its exit status."""
        proc, self._proc = self._proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        # stdout is left to the reader thread (a daemon): closing it here would wait for the thread's read, which a
        # runtime's helper process still holding the pipe can block
        return code

    def close(self) -> None:
        self._stop()
        self._tmp.cleanup()


def probe(backend: Backend, artifact: str | os.PathLike[str], feed: Mapping[str, np.ndarray], *,
          timeout: float = DEFAULT_TIMEOUT) -> None:  # fmt: skip
    """`ProbeWorker.run` in a worker of its own (started now, so its start-up is not hidden)."""
    with ProbeWorker() as worker:
        worker.run(backend, artifact, feed, timeout=timeout)


def _run_one(target: str, artifact: str, data: str) -> str | None:
    """Load and run one artifact; the runtime's refusal as text, or None when it ran."""
    module, _, name = target.partition(":")
    try:
        load = getattr(importlib.import_module(module), name)
        with np.load(data, allow_pickle=False) as npz:
            feed = {k: npz[k] for k in npz.files}
        load(artifact)(feed)
    except QuantirError as e:
        return str(e)
    except Exception as e:  # the runtime's own exception types: reported by the parent with the runtime's name
        return f"{type(e).__name__}: {e}"
    return None


def _serve() -> NoReturn:
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the runtime prints goes to stderr, never into a reply
    sys.stdout = sys.stderr
    for line in sys.stdin:
        request = json.loads(line)
        if "preload" in request:
            with contextlib.suppress(Exception):  # a loader that fails to import fails the run that needs it
                importlib.import_module(request["preload"].partition(":")[0])
            continue
        error = _run_one(request["run"], request["artifact"], request["feed"])
        reply.write(json.dumps({"error": error}) + "\n")
        reply.flush()
    # stdin closed: the parent is done (or gone). Leave without interpreter finalization, where a runtime's thread
    # pools can deadlock (seen: a child whose parent was killed, blocked on a futex at exit, never ending)
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        _serve()
    sys.exit(64)
