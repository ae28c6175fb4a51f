"""The public API (`prepare` -> calibrate -> `convert`, `quantize`, `QuantizedModel`) on the real digits CNN, with
every calibration data form users have: the same samples must give the same scales whatever their container."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from quantir.compiler.api import PreparedModel, convert, prepare, quantize
from quantir.compiler.config.quant_config import StaticQuantConfig
from quantir.compiler.quantized_model import QuantizedModel
from quantir.ir import CalibrationError, ConfigError, QuantirError, QuantType
from quantir.tools.digits import DigitsSplit, bundled_model_path, load_digits_split

MODEL = bundled_model_path()
BATCH = 32

Scales = dict[str, tuple[np.ndarray, np.ndarray]]


@pytest.fixture(scope="module")
def digits() -> DigitsSplit:
    return load_digits_split()


def _scales(model: QuantizedModel) -> Scales:
    """Every calibrated value's (scale, zero point), by name."""
    out = {v.name: (v.quant.scale, v.quant.zero_point) for v in model.ir.values() if isinstance(v.quant, QuantType)}
    assert out, "the model has no quantized values"
    return out


def _assert_same_scales(a: Scales, b: Scales) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name][0], b[name][0], err_msg=f"scale of %{name}")
        np.testing.assert_array_equal(a[name][1], b[name][1], err_msg=f"zero point of %{name}")


def _batches(x: np.ndarray) -> list[np.ndarray]:
    return [x[i : i + BATCH] for i in range(0, len(x), BATCH)]


def _float_logits(x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def reference(digits: DigitsSplit) -> QuantizedModel:
    """Default config on a list of (32, 1, 8, 8) arrays: the first 100 samples (the default sampling size)."""
    model = quantize(str(MODEL), StaticQuantConfig(), _batches(digits.calib_x))
    assert model.ctx.calibration["samples"] == 100
    return model


def _generator(x: np.ndarray) -> Iterator[np.ndarray]:
    yield from _batches(x)


def _forms(x: np.ndarray, y: np.ndarray, tmp: Path) -> dict[str, Any]:
    npz = tmp / "calib.npz"
    np.savez(npz, x=x)
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=BATCH, shuffle=False)
    return {
        "list of arrays": _batches(x),
        "list of dicts": [{"x": b} for b in _batches(x)],
        "list of 1-tuples": [(b,) for b in _batches(x)],
        "generator": _generator(x),
        "DataLoader of (x, y)": loader,
        "npz path": str(npz),
        "npz Path": npz,
        "one array": x,
        "list of torch tensors": [torch.from_numpy(b) for b in _batches(x)],
    }


FORMS = ["list of arrays", "list of dicts", "list of 1-tuples", "generator", "DataLoader of (x, y)", "npz path",
         "npz Path", "one array", "list of torch tensors"]  # fmt: skip


@pytest.mark.parametrize("form", FORMS)
def test_every_data_form_gives_the_same_scales(
    form: str, digits: DigitsSplit, reference: QuantizedModel, tmp_path: Path
) -> None:
    data = _forms(digits.calib_x, digits.train_y[:256], tmp_path)  # calib_x is train_x[:256]
    model = quantize(str(MODEL), StaticQuantConfig(), data[form])
    assert model.ctx.calibration["samples"] == 100
    _assert_same_scales(_scales(model), _scales(reference))
    x = digits.test_x[:50]
    np.testing.assert_array_equal(model(x), reference(x))


def test_the_labels_of_a_dataloader_are_ignored(digits: DigitsSplit, reference: QuantizedModel) -> None:
    """Labels that differ (or are random) change nothing: only x is calibration data."""
    labels = np.random.default_rng(1).integers(0, 10, size=len(digits.calib_x))
    loader = DataLoader(TensorDataset(torch.from_numpy(digits.calib_x), torch.from_numpy(labels)), batch_size=16)
    _assert_same_scales(_scales(quantize(str(MODEL), None, loader)), _scales(reference))


def test_different_samples_give_different_scales(digits: DigitsSplit, reference: QuantizedModel) -> None:
    """The comparison above is not vacuous: other samples move at least one scale."""
    other = quantize(str(MODEL), None, _batches(digits.train_x[600:900]))
    a, b = _scales(other), _scales(reference)
    assert any(not np.array_equal(a[n][0], b[n][0]) for n in a)


def test_calling_the_prepared_model_equals_calibrate(digits: DigitsSplit) -> None:
    batches = _batches(digits.calib_x)
    called = prepare(str(MODEL))
    for b in batches:  # INC style: run the prepared model over the data
        out = called(b)
        assert isinstance(out, np.ndarray)
        np.testing.assert_allclose(out, _float_logits(b), rtol=1e-5, atol=1e-5)  # it runs the float model
    assert called.calibrator.samples == 256
    fed = prepare(str(MODEL)).calibrate(batches, sampling_size=256)
    by_call, by_calibrate = convert(called), convert(fed)
    assert by_call.ctx.calibration["samples"] == by_calibrate.ctx.calibration["samples"] == 256
    _assert_same_scales(_scales(by_call), _scales(by_calibrate))


def test_prepared_model_accepts_keyword_and_dict_inputs(digits: DigitsSplit) -> None:
    prepared = prepare(str(MODEL))
    x = digits.calib_x[:8]
    np.testing.assert_array_equal(prepared(x=x), prepared({"x": x}))
    assert prepared.calibrator.samples == 16


def test_torch_in_torch_out(digits: DigitsSplit) -> None:
    prepared = prepare(str(MODEL))
    x = torch.from_numpy(digits.calib_x[:64])
    out = prepared(x)
    assert isinstance(out, torch.Tensor) and out.shape == (64, 10) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), _float_logits(digits.calib_x[:64]), rtol=1e-5, atol=1e-5)
    assert isinstance(prepared(digits.calib_x[:4]), np.ndarray)  # numpy in, numpy out

    model = convert(prepared)
    test = digits.test_x[:20]
    q = model(torch.from_numpy(test))
    assert isinstance(q, torch.Tensor) and q.shape == (20, 10)
    np.testing.assert_array_equal(q.numpy(), model(test))
    assert isinstance(model(test), np.ndarray)
    assert isinstance(model({"x": torch.from_numpy(test)}), torch.Tensor)


def test_sampling_size_limits_the_samples(digits: DigitsSplit) -> None:
    batches = _batches(digits.calib_x)
    limited = convert(prepare(str(MODEL)).calibrate(batches, sampling_size=40))  # cuts the second batch at 8 rows
    assert limited.ctx.calibration["samples"] == 40
    exact = convert(prepare(str(MODEL)).calibrate([digits.calib_x[:40]], sampling_size=1000))
    assert exact.ctx.calibration["samples"] == 40
    _assert_same_scales(_scales(limited), _scales(exact))

    from_config = quantize(str(MODEL), StaticQuantConfig(calibration_sampling_size=64), batches)
    assert from_config.ctx.calibration["samples"] == 64
    everything = convert(prepare(str(MODEL)).calibrate(iter(batches), sampling_size=10_000))
    assert everything.ctx.calibration["samples"] == 256


def test_a_generator_is_not_consumed_past_the_sampling_size(digits: DigitsSplit) -> None:
    pulled = []

    def gen() -> Iterator[np.ndarray]:
        for i, b in enumerate(_batches(digits.calib_x)):
            pulled.append(i)
            yield b

    prepare(str(MODEL)).calibrate(gen(), sampling_size=64)
    assert pulled == [0, 1]


def test_convert_before_calibration_raises(digits: DigitsSplit) -> None:
    prepared = prepare(str(MODEL))
    with pytest.raises(CalibrationError, match="never called with calibration data"):
        convert(prepared)
    prepared(digits.calib_x[:4])  # the same prepared model still works afterwards
    assert convert(prepared).ctx.calibration["samples"] == 4


def test_convert_needs_a_prepared_model() -> None:
    with pytest.raises(QuantirError, match=r"convert\(\) takes the result of prepare\(\), got str"):
        convert(str(MODEL))  # type: ignore[arg-type]


def test_quantize_needs_data_or_run_fn(digits: DigitsSplit) -> None:
    with pytest.raises(QuantirError, match="needs calib_data or run_fn"):
        quantize(str(MODEL), StaticQuantConfig())
    seen: list[PreparedModel] = []

    def run_fn(prepared: PreparedModel) -> None:
        seen.append(prepared)
        for b in _batches(digits.calib_x[:64]):
            prepared(b)

    model = quantize(str(MODEL), StaticQuantConfig(), run_fn=run_fn)
    assert len(seen) == 1 and model.ctx.calibration["samples"] == 64


def test_unknown_backend_names_the_allowed_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown backend 'tensorrt'; expected one of onnx_qdq"):
        prepare(str(MODEL), backend="tensorrt")
    assert prepare(str(MODEL), backend="onnx-qdq").backend == "onnx_qdq"  # the CLI spelling is accepted


def test_a_quant_config_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(ConfigError, match="quant_config must be a StaticQuantConfig, an RTNConfig or an FP8Config, "
                       "got dict"):
        prepare(str(MODEL), {"w_dtype": "int8"})  # type: ignore[arg-type]


def test_model_proto_input(digits: DigitsSplit, reference: QuantizedModel) -> None:
    proto = onnx.load(str(MODEL))
    model = quantize(proto, StaticQuantConfig(), _batches(digits.calib_x))
    _assert_same_scales(_scales(model), _scales(reference))
    np.testing.assert_array_equal(model(digits.test_x[:30]), reference(digits.test_x[:30]))
    assert len(proto.graph.node) == 17  # the caller's proto is untouched (BatchNorm still there)
    assert sum(n.op_type == "BatchNormalization" for n in proto.graph.node) == 2


def test_save_writes_model_and_manifest(reference: QuantizedModel, digits: DigitsSplit, tmp_path: Path) -> None:
    out = reference.save(tmp_path / "artifact")
    assert out == (tmp_path / "artifact").absolute()
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "quantir.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]  # no temporary folder left next to it
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    manifest = json.loads((out / "quantir.json").read_text())
    assert manifest["backend"] == "onnx_qdq" and manifest["model"] == "model.onnx"
    assert manifest["calibration"]["samples"] == 100
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"x": digits.test_x[:10]})[0], reference(digits.test_x[:10]))
    assert reference.save(tmp_path / "explicit", backend="onnx-qdq").exists()
    with pytest.raises(ConfigError, match="unknown backend 'tflite'; expected one of onnx_qdq, openvino"):
        reference.save(tmp_path / "nope", backend="tflite")
    assert not (tmp_path / "nope").exists()


def test_saving_twice_to_the_same_folder_replaces_the_artifact(
    reference: QuantizedModel, digits: DigitsSplit, tmp_path: Path
) -> None:
    out = tmp_path / "artifact"
    reference.save(out)
    first = (out / "model.onnx").read_bytes()
    reference.save(out)  # the same model again: same bytes
    assert (out / "model.onnx").read_bytes() == first

    cfg = StaticQuantConfig()
    cfg.set_local("fc1", StaticQuantConfig(w_dtype="fp32", act_dtype="fp32"))
    other = quantize(str(MODEL), cfg, _batches(digits.calib_x))
    other.save(out)
    assert (out / "model.onnx").read_bytes() != first
    manifest = json.loads((out / "quantir.json").read_text())
    assert manifest["config"]["local"] == {"fc1": {"w_dtype": "fp32", "act_dtype": "fp32"}}
    assert [u["module"] for u in manifest["quantized_nodes"]] == ["conv1", "conv2", "fc2"]
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "quantir.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]  # nothing moved aside is left behind
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"x": digits.test_x[:10]})[0], other(digits.test_x[:10]))


def test_save_refuses_to_replace_a_folder_that_is_not_an_artifact(reference: QuantizedModel, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(QuantirError, match=r"refusing to replace .*mine.*not empty and holds no quantir artifact"):
        reference.save(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
