"""A fresh artifact runs once in a child process before quantir verifies it in-process: a runtime that segfaults,
hangs or raises on it becomes a `RuntimeCrashError` naming the runtime, its version and the artifact, and
`quantir convert` exits 2 with nothing left behind (issue 17 item 4)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from quantir.backends.contract import Backend, lazy
from quantir.backends.probe import probe, runtime_version
from quantir.backends.registry import get_backend, register, unregister
from quantir.compiler import StaticQuantConfig, convert, prepare
from quantir.ir import RuntimeCrashError
from quantir.tools.cli import main
from quantir.tools.digits import bundled_model_path, load_digits_split

_LOADERS = '''
import os, signal, time

def segfault(artifact):
    """A runtime whose plugin dies on the artifact: the process is killed by SIGSEGV, as OpenVINO's CPU plugin was."""
    os.kill(os.getpid(), signal.SIGSEGV)

def hang(artifact):
    time.sleep(60)

def refuse(artifact):
    raise ValueError("unsupported node 'conv_7' (made-up runtime message)")
'''


@pytest.fixture
def loaders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module the child process can import (through PYTHONPATH), with loaders that misbehave."""
    (tmp_path / "quantir_probe_loaders.py").write_text(textwrap.dedent(_LOADERS))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return "quantir_probe_loaders"


def _variant(module: str, loader: str) -> Backend:
    """The real onnx_qdq backend, with a loader that misbehaves in the child."""
    return dataclasses.replace(get_backend("onnx_qdq"), name=f"crashy_{loader}", aliases=(), load=lazy(module, loader))


@pytest.fixture
def crashy(loaders: str) -> Iterator[Backend]:
    backend = register(_variant(loaders, "segfault"))
    try:
        yield backend
    finally:
        unregister(backend.name)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    split = load_digits_split()
    prepared = prepare(str(bundled_model_path()), StaticQuantConfig())
    prepared.calibrate(split.calib_x[:64], sampling_size=64)
    return convert(prepared).save(tmp_path_factory.mktemp("probe") / "digits")


def _feed() -> dict[str, np.ndarray]:
    return {"x": load_digits_split().calib_x[:4]}


@pytest.mark.parametrize("name", ["onnx_qdq", "openvino"])
def test_a_real_artifact_passes_the_probe(name: str, tmp_path: Path) -> None:
    split = load_digits_split()
    prepared = prepare(str(bundled_model_path()), StaticQuantConfig(), backend=name)
    prepared.calibrate(split.calib_x[:64], sampling_size=64)
    path = convert(prepared).save(tmp_path / name, backend=name)
    probe(get_backend(name), path, _feed())  # raises if the child fails


def test_a_segfault_becomes_an_error_naming_runtime_version_and_artifact(loaders: str, artifact: Path) -> None:
    with pytest.raises(RuntimeCrashError) as e:
        probe(_variant(loaders, "segfault"), artifact, _feed())
    text = str(e.value)
    version = importlib.metadata.version("onnxruntime")
    assert f"ONNX Runtime {version}" in text and repr(str(artifact)) in text, text
    assert "SIGSEGV" in text and "crashed on the first inference" in text, text
    assert runtime_version(get_backend("onnx_qdq")) == f"ONNX Runtime {version}"


def test_a_hang_is_stopped_after_the_timeout(loaders: str, artifact: Path) -> None:
    with pytest.raises(RuntimeCrashError, match=r"did not finish in 2 s"):
        probe(_variant(loaders, "hang"), artifact, _feed(), timeout=2)


def test_a_runtime_exception_is_reported_with_its_message(loaders: str, artifact: Path) -> None:
    with pytest.raises(RuntimeCrashError, match=r"refused the artifact: ValueError: unsupported node 'conv_7'"):
        probe(_variant(loaders, "refuse"), artifact, _feed())


def test_convert_exits_2_and_leaves_no_artifact(crashy: Backend, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    data = tmp_path / "calib.npz"
    np.savez(data, x=load_digits_split().calib_x[:64])
    out = tmp_path / "out"
    rc = main(["convert", str(bundled_model_path()), "--calib", str(data), "--to", crashy.name, "-o", str(out)])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert rc == 2, text
    assert "SIGSEGV" in text and "Traceback" not in text, text
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    assert {p.name for p in tmp_path.iterdir()} <= {data.name, "quantir_probe_loaders.py", "__pycache__"}
