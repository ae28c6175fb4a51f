"""IPEX's qconf summary as quantir writes it, checked against a file real IPEX 2.8.0 wrote for the same digits CNN
(`data/ipex-2.8.0-digits-qconf.json`: `ipex.quantization.prepare(model, default_static_qconfig_mapping)`,
calibration on the 256 calibration images, `save_qconf_summary`): the same records in the same order with the same
module paths and tensor ids, every field IPEX writes, quantir's scales, and INC's fallback rule."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from quantir.backends.ipex.qconf_summary import FIELDS, ROOT_KEY, build_qconf, check_qconf, patch_qconf
from quantir.compiler.api import convert, prepare
from quantir.compiler.config.quant_config import StaticQuantConfig
from quantir.ir import Graph, SerializationError
from quantir.tools.dev.train_digits import load_bundled_module
from quantir.tools.digits import load_digits_split

REAL = json.loads((Path(__file__).parent / "data" / "ipex-2.8.0-digits-qconf.json").read_text())
MODULES = [name for name, _ in load_bundled_module().named_modules()]


def _graph(fallback: str | None = None) -> Graph:
    digits = load_digits_split()
    cfg = StaticQuantConfig()
    if fallback:
        cfg.set_local(fallback, StaticQuantConfig(w_dtype="fp32", act_dtype="fp32"))
    prepared = prepare(load_bundled_module(), cfg, example_inputs=(torch.zeros(8, 1, 8, 8),), backend="ipex")
    for batch in torch.from_numpy(digits.calib_x).split(32):
        prepared(batch)
    return convert(prepared).legalized("ipex").graph


@pytest.fixture(scope="module")
def ours() -> dict[str, Any]:
    return build_qconf(_graph())


def _ops(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc[ROOT_KEY]["q_op_infos"].values())


def _ids(infos: list[dict[str, Any]]) -> list[int | None]:
    return [i.get("id") for i in infos]


def test_the_field_list_is_what_real_ipex_writes() -> None:
    assert set(REAL) == {ROOT_KEY} and set(REAL[ROOT_KEY]) == FIELDS["module"]
    for op in _ops(REAL):
        assert set(op) == FIELDS["q_op"]
        assert all(FIELDS["input"] <= set(i) for i in op["input_tensor_infos"] if i)
        assert all(FIELDS["weight"] | {"scale", "zero_point"} == set(w) for w in op["weight_tensor_infos"])
        assert all(FIELDS["output"] <= set(o) for o in op["output_tensor_infos"])
        assert FIELDS["observer"] <= set(op["activation_observer"]) and FIELDS["observer"] <= set(op["weight_observer"])
    assert check_qconf(REAL, MODULES) == []


def test_synthesized_records_match_real_ipex_record_for_record(ours: dict[str, Any]) -> None:
    assert set(ours[ROOT_KEY]) == FIELDS["module"]
    mine, real = _ops(ours), _ops(REAL)
    assert [(o["fqn"], o["op_type_is_module"]) for o in mine] == [(o["fqn"], o["op_type_is_module"]) for o in real]
    for a, b in zip(mine, real, strict=True):
        assert set(a) == set(b)
        if a["op_type_is_module"]:
            assert a["op_type"] == b["op_type"]  # "<class 'torch.nn.modules.conv.Conv2d'>"
        assert _ids(a["input_tensor_infos"]) == _ids(b["input_tensor_infos"])
        assert _ids(a["output_tensor_infos"]) == _ids(b["output_tensor_infos"])
        assert len(a["weight_tensor_infos"]) == len(b["weight_tensor_infos"])
        assert [i["inf_dtype"] for i in a["input_tensor_infos"] if i][:1] == [
            i["inf_dtype"] for i in b["input_tensor_infos"] if i][:1]  # fmt: skip
    assert ours[ROOT_KEY]["layer_output_infos"] == REAL[ROOT_KEY]["layer_output_infos"]
    assert check_qconf(ours, MODULES) == []
    json.dumps(ours, allow_nan=False)


def test_scales_are_the_irs(ours: dict[str, Any]) -> None:
    graph = _graph()
    conv1 = _ops(ours)[0]
    qw = graph.constants["conv1.weight"].quant
    qx = graph.inputs[0].quant
    assert np.allclose(conv1["weight_tensor_infos"][0]["scale"], qw.scale.reshape(-1))  # type: ignore[union-attr]
    assert conv1["input_tensor_infos"][0]["scale"] == [float(qx.scale.reshape(-1)[0])]  # type: ignore[union-attr]
    assert conv1["weight_tensor_infos"][0]["zero_point"] == [0] * 16


def test_fallback_forces_float_on_the_consumer_and_its_producer() -> None:
    doc = build_qconf(_graph("fc1"))
    ops = {o["fqn"]: o for o in _ops(doc) if o["op_type_is_module"]}
    assert ops["fc1"]["input_tensor_infos"][0]["force_dtype"] == "torch.float32"
    assert ops["fc1"]["weight_tensor_infos"] == [{"orig_dtype": "torch.float32", "inf_dtype": "torch.float32"}]
    assert all(ops[m]["input_tensor_infos"][0]["force_dtype"] == "torch.quint8" for m in ("conv1", "conv2", "fc2"))
    producer = _ops(doc)[5]  # flatten, whose output fc1 reads
    assert producer["output_tensor_infos"][0]["inf_dtype"] == "torch.float32"
    assert check_qconf(doc, MODULES) == []


def test_patch_copies_quantir_values_onto_an_ipex_template(ours: dict[str, Any]) -> None:
    patched = patch_qconf(REAL, ours)
    for p, o, r in zip(_ops(patched), _ops(ours), _ops(REAL), strict=True):
        assert p["op_type"] == r["op_type"] and _ids(p["input_tensor_infos"]) == _ids(r["input_tensor_infos"])
        for part in ("input_tensor_infos", "weight_tensor_infos"):
            for pi, oi in zip(p[part], o[part], strict=True):
                assert pi.get("scale") == oi.get("scale") and pi.get("force_dtype") == oi.get("force_dtype")
    assert check_qconf(patched, MODULES) == []
    other = copy.deepcopy(ours)
    other[ROOT_KEY]["q_op_infos"]["6"]["fqn"] = "head"
    with pytest.raises(SerializationError, match="head"):
        patch_qconf(REAL, other)


def _broken(doc: dict[str, Any], edit: str) -> dict[str, Any]:
    bad = copy.deepcopy(doc)
    op = bad[ROOT_KEY]["q_op_infos"]["2"]
    if edit == "dangling id":
        op["input_tensor_infos"][0]["id"] = 99
    elif edit == "missing scale":
        del op["input_tensor_infos"][0]["scale"]
    elif edit == "zero point":
        op["input_tensor_infos"][0]["zero_point"] = [300]
    elif edit == "fqn":
        op["fqn"] = "layer9"
    elif edit == "field":
        del op["weight_observer"]
    return bad


@pytest.mark.parametrize(("edit", "message"), [
    ("dangling id", "input id 99 is produced by no recorded op"),
    ("missing scale", "quantized (torch.quint8) but has no scale/zero_point"),
    ("zero point", "zero point 300 outside [0, 255]"),
    ("fqn", "fqn 'layer9' is not a module of the model"),
    ("field", "missing weight_observer"),
])  # fmt: skip
def test_check_qconf_names_each_fault(ours: dict[str, Any], edit: str, message: str) -> None:
    problems = check_qconf(_broken(ours, edit), MODULES)
    assert any(message in p and "q_op_infos[2]" in p for p in problems), problems
