"""A model whose inputs fix the batch size (batch 1 is common in exported OCR models) calibrates from an .npz: the
archive is cut into batches of the model's size, never into the default 32, and a batch size that contradicts the
model is a clear error (issue 17, item 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from quantir.compiler import StaticQuantConfig, convert, prepare
from quantir.ir import CalibrationError
from quantir.tools.cli import main
from quantir.tools.digits import DigitsSplit, bundled_model_path, load_digits_split


@pytest.fixture(scope="module")
def digits() -> DigitsSplit:
    return load_digits_split()


def _fixed(tmp_path: Path, batch: int) -> Path:
    """The bundled digits CNN with its batch dimension fixed to `batch` on the input and the output."""
    model = onnx.load(str(bundled_model_path()))
    for v in (*model.graph.input, *model.graph.output):
        dim = v.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch
    path = tmp_path / f"digits_b{batch}.onnx"
    onnx.save(model, str(path))
    return path


def _npz(tmp_path: Path, x: np.ndarray) -> Path:
    path = tmp_path / "calib.npz"
    np.savez(path, x=x)
    return path


@pytest.mark.parametrize("batch, samples, used", [(1, 20, 20), (4, 30, 28)])
def test_npz_is_cut_into_the_models_batch(
    tmp_path: Path, digits: DigitsSplit, batch: int, samples: int, used: int
) -> None:
    prepared = prepare(str(_fixed(tmp_path, batch)), StaticQuantConfig())
    prepared.calibrate(_npz(tmp_path, digits.calib_x[:samples]), sampling_size=64)
    assert prepared.calibrator.samples == used  # whole batches only: 30 samples in batches of 4 give 28
    model = convert(prepared)
    assert sum(d.quantized for d in model.decisions() if d.op_type in ("Conv", "Gemm")) == 4
    out = model(digits.test_x[:batch])
    assert out.shape == (batch, 10)


def test_a_batch_size_against_the_model_is_a_clear_error(tmp_path: Path, digits: DigitsSplit) -> None:
    prepared = prepare(str(_fixed(tmp_path, 1)), StaticQuantConfig())
    with pytest.raises(CalibrationError, match=r"batch size 32 was asked, but the model's inputs fix a batch of 1"):
        prepared.calibrate(_npz(tmp_path, digits.calib_x[:8]), batch_size=32)
    with pytest.raises(CalibrationError, match=r"holds 2 samples, but the model's inputs fix a batch of 4"):
        prepare(str(_fixed(tmp_path, 4)), StaticQuantConfig()).calibrate(_npz(tmp_path, digits.calib_x[:2]))


def test_cli_converts_a_batch_1_model_and_takes_a_batch_size(
    tmp_path: Path, digits: DigitsSplit, capsys: pytest.CaptureFixture[str]
) -> None:
    model, calib = _fixed(tmp_path, 1), _npz(tmp_path, digits.calib_x[:24])
    assert main(["convert", str(model), "--calib", str(calib), "-o", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "(24 calibration samples)" in out and "int8 kernel coverage: 100% (4/4 Conv/MatMul/Gemm)" in out
    assert main(["convert", str(model), "--calib", str(calib), "--batch-size", "8", "-o", str(tmp_path / "b")]) == 2
    assert "the model's inputs fix a batch of 1" in capsys.readouterr().err.replace("\n  ", " ")
    free, calib = bundled_model_path(), _npz(tmp_path, digits.calib_x[:40])
    assert main(["convert", str(free), "--calib", str(calib), "--batch-size", "8", "-o", str(tmp_path / "c")]) == 0
    assert "(40 calibration samples)" in capsys.readouterr().out
