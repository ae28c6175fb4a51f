"""Issue 5 on the OpenVINO backend: the torch flow's artifacts run int8 in OpenVINO, fallbacks written with torch
names (set_local with a module path, a torch type, or INC 2.x op dicts) leave no FakeQuantize in front of exactly
those modules' ops, and MiniLM through the torch path keeps its embeddings on OpenVINO.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch

from quantir.backends.openvino import verify_openvino
from quantir.backends.openvino.emit import provenance
from quantir.compiler.api import convert, prepare
from quantir.compiler.config.quant_config import StaticQuantConfig
from quantir.compiler.quantized_model import QuantizedModel
from quantir.tools.dev.train_digits import load_bundled_module
from quantir.tools.digits import DigitsSplit, load_digits_split

FP32 = StaticQuantConfig(w_dtype="fp32", act_dtype="fp32")
HEAVY = ("Conv", "Gemm", "MatMul")


@pytest.fixture(scope="module")
def digits() -> DigitsSplit:
    return load_digits_split()


def _quantize(digits: DigitsSplit, cfg: StaticQuantConfig) -> QuantizedModel:
    module = load_bundled_module()
    prepared = prepare(module, cfg, example_inputs=(torch.from_numpy(digits.calib_x[:32]),), backend="openvino")
    for i in range(0, len(digits.calib_x), 32):
        prepared(torch.from_numpy(digits.calib_x[i : i + 32]))
    return convert(prepared)


def _fq_fed_ops(xml: Path) -> dict[str, bool]:
    """For each Convolution/MatMul in the saved OpenVINO model: is its data input produced by a FakeQuantize?"""
    model = ov.Core().read_model(str(xml))
    fed = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("Convolution", "MatMul"):
            src = op.input_value(0).get_node()
            fed[op.get_friendly_name()] = src.get_type_name() == "FakeQuantize"
    return fed


def _heavy_modules(model: QuantizedModel) -> dict[str, bool]:
    return {d.module: d.quantized for d in model.decisions("openvino") if d.op_type in HEAVY and d.module}


def test_torch_flow_runs_int8_in_openvino(digits: DigitsSplit, tmp_path: Path) -> None:
    model = _quantize(digits, StaticQuantConfig())
    out = model.save(tmp_path / "ov", backend="openvino")
    report = verify_openvino(out, {"x": digits.test_x[:64]})
    print(f"\ntorch flow -> OpenVINO: {report.coverage_text()}")
    assert report.coverage == 1.0 and report.ok
    logits = report.run({"x": digits.test_x})[0]
    with torch.no_grad():
        fp32 = load_bundled_module()(torch.from_numpy(digits.test_x)).numpy()
    acc_q = float(np.mean(logits.argmax(1) == digits.test_y))
    acc_f = float(np.mean(fp32.argmax(1) == digits.test_y))
    assert acc_q >= acc_f - 0.005, (acc_q, acc_f)
    fed = _fq_fed_ops(out / "model.xml")
    assert fed and all(fed.values()), fed


@pytest.mark.parametrize(
    ("rule", "float_modules"),
    [
        (lambda c: c.set_local("fc1", FP32), {"fc1"}),
        (lambda c: c.set_local(torch.nn.Linear, FP32), {"fc1", "fc2"}),
        (lambda c: c.set_local("Conv2d", FP32), {"conv1", "conv2"}),
    ],
    ids=["module-path", "torch-type", "type-name"],
)
def test_fallback_leaves_no_fake_quantize_in_front_of_those_modules(
    rule,
    float_modules: set[str],
    digits: DigitsSplit,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    cfg = StaticQuantConfig()
    rule(cfg)
    model = _quantize(digits, cfg)
    decided = _heavy_modules(model)
    assert {m for m, q in decided.items() if not q} == float_modules
    out = model.save(tmp_path / "ov", backend="openvino")
    assert json.loads((out / "quantir.json").read_text())["backend"] == "openvino"
    fed = _fq_fed_ops(out / "model.xml")
    # OpenVINO names the ops after the ONNX nodes, which carry the module paths in quantir's provenance map.
    source = provenance(ov.Core().read_model(str(out / "model.xml")))
    by_module: dict[str, list[bool]] = {}
    for name, has_fq in fed.items():
        entry = source.get(name, "")
        module = entry.split(":")[1] if entry.count(":") >= 2 else ""
        by_module.setdefault(module, []).append(has_fq)
    for module in ("conv1", "conv2", "fc1", "fc2"):
        assert module in by_module, (module, source)
        expected = module not in float_modules
        assert all(v == expected for v in by_module[module]), (module, by_module[module])


def test_inc_2x_op_dicts_with_torch_names(digits: DigitsSplit) -> None:
    fp32 = {"weight": {"dtype": ["fp32"]}, "activation": {"dtype": ["fp32"]}}
    by_name = _quantize(digits, StaticQuantConfig(op_name_dict={"fc1": fp32}))
    assert {m for m, q in _heavy_modules(by_name).items() if not q} == {"fc1"}
    by_type = _quantize(digits, StaticQuantConfig(op_type_dict={"Conv2d": fp32}))
    assert {m for m, q in _heavy_modules(by_type).items() if not q} == {"conv1", "conv2"}


@pytest.mark.slow
def test_minilm_torch_flow_on_openvino(tmp_path: Path) -> None:
    from quantir.tools.minilm import CALIBRATION_COUNT, load_sentences, load_torch_model, mean_cosine, tokenize

    sentences = load_sentences()
    model = load_torch_model()
    example = tokenize(sentences[:2])
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=128)
    feeds = {k: torch.from_numpy(v) for k, v in example.items()}
    cfg = StaticQuantConfig(smooth_quant=True, smooth_quant_alpha=0.95)
    dynamic = {k: {0: batch, 1: seq} for k in feeds}
    prepared = prepare(model, cfg, example_inputs=feeds, dynamic_shapes=dynamic, backend="openvino")
    for i in range(0, CALIBRATION_COUNT, 16):
        prepared(**{k: torch.from_numpy(v) for k, v in tokenize(sentences[i : i + 16]).items()})
    quantized = convert(prepared)
    out = quantized.save(tmp_path / "ov", backend="openvino")
    held = sentences[CALIBRATION_COUNT : CALIBRATION_COUNT + 200]
    probe = tokenize(held[:16])
    report = verify_openvino(out, probe)
    compiled = ov.Core().compile_model(str(out / "model.xml"), "CPU")
    emb_q = np.concatenate(
        [np.asarray(compiled(tokenize(held[i : i + 16]))[compiled.outputs[0]]) for i in range(0, len(held), 16)]
    )
    with torch.no_grad():
        ref = []
        for i in range(0, len(held), 16):
            t = tokenize(held[i : i + 16])
            ref.append(model(**{k: torch.from_numpy(v) for k, v in t.items()}).numpy())
    cos = mean_cosine(emb_q, np.concatenate(ref))
    print(f"\nMiniLM torch flow -> OpenVINO: {report.coverage_text()}, mean cosine {cos:.4f} on {len(held)} sentences")
    assert report.coverage == 1.0
    assert cos >= 0.99
