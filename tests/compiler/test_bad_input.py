"""Issue 3's bad inputs, one test each: every one raises a QuantirError subclass whose message names what is wrong,
and the user's flow (quantize, then save) leaves no artifact and no temporary folder behind."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from quantir.compiler.api import convert, prepare, quantize
from quantir.compiler.config.quant_config import StaticQuantConfig, load_config
from quantir.compiler.config.resolve import OpRef, resolve_op_configs
from quantir.compiler.quantized_model import QuantizedModel
from quantir.ir import CalibrationError, ConfigError, QuantirError, SerializationError
from quantir.tools.digits import DigitsSplit, bundled_model_path, load_digits_split

MODEL = str(bundled_model_path())
FP32 = StaticQuantConfig(w_dtype="fp32", act_dtype="fp32")


@pytest.fixture(scope="module")
def digits() -> DigitsSplit:
    return load_digits_split()


@pytest.fixture(scope="module")
def quantized(digits: DigitsSplit) -> QuantizedModel:
    return quantize(MODEL, StaticQuantConfig(), digits.calib_x)


def _batches(x: np.ndarray, size: int = 32) -> list[np.ndarray]:
    return [x[i : i + size].copy() for i in range(0, len(x), size)]


def _quantize_and_save(tmp_path: Path, data: Any, cfg: StaticQuantConfig | None = None) -> Path:
    """The user's flow: quantize, then save into `tmp_path/out/artifact`. Returns the `out` folder."""
    out = tmp_path / "out"
    out.mkdir()
    try:
        quantize(MODEL, cfg, data).save(out / "artifact")
    finally:
        assert os.listdir(out) == [], f"left behind: {os.listdir(out)}"
    return out


def _fails(tmp_path: Path, data: Any, error: type[Exception], match: str, cfg: StaticQuantConfig | None = None) -> str:
    with pytest.raises(error, match=match) as info:
        _quantize_and_save(tmp_path, data, cfg)
    return str(info.value)


# ---- empty calibration data ----------------------------------------------------------------------------------------


def test_empty_list(tmp_path: Path) -> None:
    _fails(tmp_path, [], CalibrationError, r"^the calibration data is empty: it yielded no batches$")


def test_empty_generator(tmp_path: Path) -> None:
    def nothing() -> Iterator[np.ndarray]:
        yield from ()

    _fails(tmp_path, nothing(), CalibrationError, "the calibration data is empty")


def test_empty_dataloader(tmp_path: Path) -> None:
    loader = DataLoader(TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)), batch_size=8)
    _fails(tmp_path, loader, CalibrationError, "the calibration data is empty")


def test_empty_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 1, 8, 8), np.float32))
    _fails(tmp_path, tmp_path / "empty.npz", CalibrationError, "the calibration data is empty")


def test_batches_with_no_rows(tmp_path: Path) -> None:
    empty = np.zeros((0, 1, 8, 8), np.float32)
    _fails(tmp_path, [empty, empty], CalibrationError, "calibration batch 0 has 0 samples")


def test_no_calibration_data_at_all(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="no calibration data was given"):
        prepare(MODEL).calibrate(None)
    _fails(tmp_path, 5, CalibrationError, "calibration data of type int is not iterable")


# ---- NaN / Inf -----------------------------------------------------------------------------------------------------


def test_nan_in_one_batch_of_several(tmp_path: Path, digits: DigitsSplit) -> None:
    batches = _batches(digits.calib_x[:96])
    batches[2][5, 0, 3, 4] = np.nan
    _fails(tmp_path, batches, CalibrationError,
           r"^calibration batch 2, input 'x' contains 1 NaN/Inf values; calibration data must be finite$")  # fmt: skip


def test_inf_in_one_batch_of_several(tmp_path: Path, digits: DigitsSplit) -> None:
    batches = _batches(digits.calib_x[:96])
    batches[1][0, 0, 0, :3] = [np.inf, -np.inf, np.inf]
    _fails(tmp_path, batches, CalibrationError, r"calibration batch 1, input 'x' contains 3 NaN/Inf values")


def test_nan_in_an_npz(tmp_path: Path, digits: DigitsSplit) -> None:
    x = digits.calib_x[:96].copy()
    x[70, 0, 0, 0] = np.nan  # row 70 is in the third 32-row batch
    np.savez(tmp_path / "nan.npz", x=x)
    _fails(tmp_path, tmp_path / "nan.npz", CalibrationError, r"calibration batch 2, input 'x' contains 1 NaN/Inf")


def test_nan_when_calling_the_prepared_model(digits: DigitsSplit) -> None:
    prepared = prepare(MODEL)
    x = digits.calib_x[:8].copy()
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(CalibrationError, match="input 'x' contains 1 NaN/Inf values"):
        prepared(torch.from_numpy(x))
    assert prepared.calibrator.samples == 0  # nothing was observed


# ---- wrong input names ---------------------------------------------------------------------------------------------


def test_wrong_input_name(tmp_path: Path, digits: DigitsSplit) -> None:
    batches = [{"image": b} for b in _batches(digits.calib_x)]
    _fails(tmp_path, batches, CalibrationError,
           r"^calibration batch 0: input names do not match the model: unknown \['image'\], missing \['x'\]; "
           r"the model's inputs are \['x'\]$")  # fmt: skip


def test_wrong_input_name_in_a_later_batch(tmp_path: Path, digits: DigitsSplit) -> None:
    batches: list[dict[str, np.ndarray]] = [{"x": b} for b in _batches(digits.calib_x[:96])]
    batches[2] = {"x": batches[2]["x"], "mask": batches[2]["x"]}
    _fails(tmp_path, batches, CalibrationError, r"calibration batch 2: .*unknown \['mask'\], missing \[\]")


def test_wrong_input_name_in_an_npz(tmp_path: Path, digits: DigitsSplit) -> None:
    np.savez(tmp_path / "named.npz", image=digits.calib_x, label=digits.train_y[:256])
    message = r"named\.npz lacks arrays for inputs \['x'\]; it has \['image', 'label'\], the model's inputs are \['x'\]"
    _fails(tmp_path, tmp_path / "named.npz", CalibrationError, message)


def test_wrong_keyword_when_calling_the_prepared_model(digits: DigitsSplit) -> None:
    with pytest.raises(CalibrationError, match=r"unknown \['image'\], missing \['x'\]"):
        prepare(MODEL)(image=digits.calib_x[:4])


# ---- wrong input shapes --------------------------------------------------------------------------------------------


def test_wrong_spatial_shape(tmp_path: Path) -> None:
    batches = [np.random.default_rng(0).random((16, 1, 9, 9), dtype=np.float32) for _ in range(3)]
    _fails(tmp_path, batches, CalibrationError,
           r"^calibration batch 0, input 'x' has shape \[16, 1, 9, 9\]; the model expects \[batch, 1, 8, 8\] "
           r"\(axis 2: 9 vs 8\)$")  # fmt: skip


def test_wrong_rank(tmp_path: Path, digits: DigitsSplit) -> None:
    flat = [b.reshape(len(b), 64) for b in _batches(digits.calib_x)]
    _fails(tmp_path, flat, CalibrationError,
           r"input 'x' has shape \[32, 64\]; the model expects rank 4 \[batch, 1, 8, 8\]")  # fmt: skip


def test_wrong_shape_in_a_later_batch(tmp_path: Path, digits: DigitsSplit) -> None:
    batches = _batches(digits.calib_x[:64])
    batches.append(np.zeros((8, 3, 8, 8), np.float32))
    _fails(
        tmp_path, batches, CalibrationError, r"calibration batch 2, input 'x' has shape \[8, 3, 8, 8\].*axis 1: 3 vs 1"
    )


def test_wrong_dtype(tmp_path: Path) -> None:
    strings = [np.full((4, 1, 8, 8), "a")]
    _fails(tmp_path, strings, CalibrationError, r"input 'x' has dtype <U1; the model expects float32")


# ---- unknown op type in set_local ----------------------------------------------------------------------------------

_CONVV = (
    r"set_local key 'Convv' is not a known op type \(ONNX op types, torch.nn module classes and the module classes "
    r"in this model\) and matches no op name; did you mean 'Conv', 'Conv2d', 'Concat'\?"
)


def test_unknown_op_type_in_set_local(tmp_path: Path, digits: DigitsSplit) -> None:
    cfg = StaticQuantConfig().set_local("Convv", FP32)  # accepted here: only the model knows its op types
    with pytest.raises(ConfigError, match=_CONVV) as info:
        _quantize_and_save(tmp_path, digits.calib_x, cfg)
    assert "pass 'annotate'" not in str(info.value)  # a user error, reported as such, not as a pass failure


def test_the_config_layer_raises_config_error_for_an_unknown_op_type() -> None:
    ops = [OpRef(key=0, name="node_conv2d", op_type="Conv", module_path="conv1", module_type=None)]
    cfg = StaticQuantConfig().set_local("Convv", FP32)
    with pytest.raises(ConfigError, match=r"set_local key 'Convv' is not a known op type .*did you mean 'Conv'"):
        resolve_op_configs(cfg, ops)


def test_unknown_op_type_in_set_local_is_a_config_error(digits: DigitsSplit) -> None:
    cfg = StaticQuantConfig().set_local("Convv", FP32)
    try:
        prepare(MODEL, cfg)
    except QuantirError as e:
        assert isinstance(e, ConfigError), f"{type(e).__name__}: {e}"
    else:
        pytest.fail("no error")


def test_unknown_op_type_in_a_config_file(tmp_path: Path, digits: DigitsSplit) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("local:\n  Convv:\n    w_dtype: fp32\n    act_dtype: fp32\n")
    with pytest.raises(QuantirError, match=_CONVV):
        _quantize_and_save(tmp_path, digits.calib_x, load_config(path))


def test_a_name_rule_that_matches_nothing_only_warns(digits: DigitsSplit) -> None:
    """A lowercase key is a name regex: no match is a warning with the nearest names, not an error."""
    cfg = StaticQuantConfig().set_local("fc3", FP32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare(MODEL, cfg)
    assert any("set_local('fc3') matches no op" in str(w.message) and "'fc1'" in str(w.message) for w in caught)


# ---- invalid config values -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"act_algo": "avg"}, r"^StaticQuantConfig.act_algo='avg': expected one of minmax, kl, percentile, mse$"),
        ({"w_dtype": "int3"}, r"^StaticQuantConfig.w_dtype='int3': expected one of int8, uint8, int4, .*fp16$"),
        ({"act_granularity": "per_row"}, r"act_granularity='per_row': expected one of per_channel, per_tensor"),
        ({"w_sym": "yes"}, r"w_sym='yes': expected True or False"),
        ({"calibration_sampling_size": 0}, r"calibration_sampling_size=0: expected an int >= 1"),
        ({"percentile": 150}, r"percentile=150: expected a number in \(0, 100\]"),
        ({"act_dtype": "fp8_e4m3", "act_sym": False}, r"act_sym=False: fp8_e4m3 is symmetric only"),
    ],
)
def test_invalid_config_value(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StaticQuantConfig(**kwargs)


def test_invalid_config_value_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("act_algo: avg\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml: StaticQuantConfig\.act_algo='avg': expected one of minmax"):
        load_config(path)
    path.write_text("local:\n  fc1:\n    w_dtype: int3\n")
    with pytest.raises(ConfigError, match=r"local\['fc1'\] in .*cfg\.yaml: StaticQuantConfig\.w_dtype='int3'"):
        load_config(path)
    path.write_text("w_dtpye: int8\n")
    with pytest.raises(ConfigError, match=r"unknown key 'w_dtpye' in .*cfg\.yaml; did you mean 'w_dtype'"):
        load_config(path)


def test_invalid_config_value_set_after_construction(tmp_path: Path, digits: DigitsSplit) -> None:
    cfg = StaticQuantConfig()
    cfg.act_algo = "avg"  # dataclass fields are assignable; prepare() validates again
    with pytest.raises(QuantirError, match=r"act_algo='avg': expected one of minmax, kl, percentile, mse"):
        _quantize_and_save(tmp_path, digits.calib_x, cfg)


# ---- unwritable output path ----------------------------------------------------------------------------------------


def test_output_under_proc(quantized: QuantizedModel) -> None:
    target = Path("/proc/quantir-test-artifact")
    with pytest.raises(SerializationError, match=r"cannot write the artifact '/proc/quantir-test-artifact'"):
        quantized.save(target)
    assert not target.exists()
    assert not [n for n in os.listdir("/proc") if n.startswith(".quantir-test-artifact")]


def test_output_whose_parent_is_a_file(quantized: QuantizedModel, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SerializationError, match=r"cannot write the artifact '.*/file/artifact': .*Not a directory"):
        quantized.save(tmp_path / "file" / "artifact")
    assert os.listdir(tmp_path) == ["file"]
    assert (tmp_path / "file").read_text() == "not a folder"


def test_output_that_is_a_file(quantized: QuantizedModel, tmp_path: Path) -> None:
    (tmp_path / "artifact").write_text("mine")
    with pytest.raises(SerializationError, match=r"'.*/artifact': it exists and is not a folder"):
        quantized.save(tmp_path / "artifact")
    assert os.listdir(tmp_path) == ["artifact"]
    assert (tmp_path / "artifact").read_text() == "mine"


def test_output_whose_parent_does_not_exist(quantized: QuantizedModel, tmp_path: Path) -> None:
    with pytest.raises(SerializationError, match=r"cannot write the artifact '.*/missing/artifact'"):
        quantized.save(tmp_path / "missing" / "artifact")
    assert os.listdir(tmp_path) == []


def test_a_failed_save_keeps_the_previous_artifact(quantized: QuantizedModel, tmp_path: Path) -> None:
    out = quantized.save(tmp_path / "artifact")
    before = (out / "model.onnx").read_bytes()
    with pytest.raises(ConfigError, match="unknown backend"):
        quantized.save(out, backend="tflite")
    assert (out / "model.onnx").read_bytes() == before
    assert os.listdir(tmp_path) == ["artifact"]


def test_a_bad_batch_after_good_ones_leaves_the_prepared_model_usable(digits: DigitsSplit) -> None:
    """INC style: the error names the batch; what was observed before it is kept, and calibration can go on."""
    prepared = prepare(MODEL)
    batches = _batches(digits.calib_x[:96])
    batches[1][0, 0, 0, 0] = np.nan
    with pytest.raises(CalibrationError, match="calibration batch 1"):
        prepared.calibrate(batches)
    assert prepared.calibrator.samples == 32
    prepared.calibrate([digits.calib_x[32:64]])
    assert convert(prepared).ctx.calibration["samples"] == 64
