"""The `quantir ir` commands on the bundled real model, and their one-paragraph errors on bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from quantir.tools.cli import main
from quantir.tools.digits import bundled_model_path, load_digits_split

MODEL = bundled_model_path()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_dump_verify_export_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    qir = tmp_path / "digits.qir"
    rc, out, _ = _run(capsys, "ir", "dump", str(MODEL), "-o", str(qir))
    assert rc == 0 and "wrote" in out
    text = qir.read_text()
    assert "Conv(" in text and '"conv1"' in text  # provenance is visible in the dump
    assert qir.with_suffix(".safetensors").exists()

    rc, out, _ = _run(capsys, "ir", "verify", str(qir))
    assert rc == 0 and ": ok (" in out

    onnx_out = tmp_path / "digits.onnx"
    rc, _, _ = _run(capsys, "ir", "export", str(qir), "-o", str(onnx_out))
    assert rc == 0
    x = load_digits_split().test_x[:64]
    np.testing.assert_allclose(_logits(onnx_out, x), _logits(MODEL, x), rtol=1e-5, atol=1e-6)


def test_dump_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "ir", "dump", str(MODEL))
    assert rc == 0 and out.startswith("qir ")


def test_diff_equal_and_different(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = tmp_path / "a.qir"
    assert _run(capsys, "ir", "dump", str(MODEL), "-o", str(a))[0] == 0
    rc, out, _ = _run(capsys, "ir", "diff", str(a), str(MODEL))
    assert rc == 0 and "structurally equal" in out

    b = tmp_path / "b.qir"
    shutil.copy(a.with_suffix(".safetensors"), b.with_suffix(".safetensors"))
    text = a.read_text()
    assert "MaxPool(" in text
    b.write_text(text.replace("MaxPool(", "AveragePool(", 1))
    rc, out, _ = _run(capsys, "ir", "diff", str(a), str(b))
    assert rc == 1
    assert "first difference: node" in out and "op_type 'MaxPool' vs 'AveragePool'" in out
    assert "-" in out and "+" in out and "AveragePool(" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["ir", "dump", "missing.onnx"], "missing.onnx: no such file"),
        (["ir", "verify", "{tmp}"], "is a directory"),
        (["ir", "dump", "{tmp}/model.txt"], "unknown model format '.txt'"),
        (["ir", "verify", "{tmp}/broken.qir"], "broken.qir:2:"),
        (["ir", "dump", "{tmp}/garbage.onnx"], "garbage.onnx"),
    ],
)
def test_bad_input_gives_one_paragraph_and_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    (tmp_path / "model.txt").write_text("not a model")
    (tmp_path / "broken.qir").write_text('qir 1 ir_version 8 opset {"": 17}\ngraph g(%x f32[1]) -> (%x) {\n}\n')
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\xffthis is not protobuf" * 10)
    rc, out, err = _run(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert rc == 2, (out, err)
    assert err.startswith("quantir: error: ")
    assert expected in " ".join(err.split())
    assert "Traceback" not in err and 'File "' not in err


def test_console_script_is_installed(tmp_path: Path) -> None:
    exe = shutil.which("quantir") or str(Path(sys.executable).parent / "quantir")
    proc = subprocess.run([exe, "ir", "verify", str(MODEL)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout
