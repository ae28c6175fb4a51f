"""Issue 12 on the real all-MiniLM-L6-v2 (transformers BertModel + mean pooling): both torch backends keep the
embedding cosine at least as good as the same config on ONNX QDQ, all 36 Linear layers are int8 in the artifact
(Inductor's compiled code for pt2e, the frozen TorchScript graph for ipex), and a `set_local` fallback by module
path is exact."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from quantir.backends.ipex.emit import conv_linear_nodes
from quantir.backends.ipex.verify import load as load_ipex
from quantir.backends.ipex.verify import load_script
from quantir.backends.pt2e.verify import generated_code, kernel_counts, load_program, program_units
from quantir.backends.pt2e.verify import load as load_pt2e
from quantir.compiler.api import convert, prepare
from quantir.compiler.config.quant_config import StaticQuantConfig
from quantir.tools.minilm import CALIBRATION_COUNT, batches, load_sentences, load_torch_model, mean_cosine

pytestmark = pytest.mark.slow

FALLBACK = "encoder.layer.0.attention.self.query"


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    model = load_torch_model()
    sentences = load_sentences()
    calib, held_out = sentences[:CALIBRATION_COUNT], sentences[CALIBRATION_COUNT:][:96]
    example = {k: torch.from_numpy(v) for k, v in batches(calib[:2], 2)[0].items()}
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=512)
    cfg = StaticQuantConfig(smooth_quant=True, smooth_quant_alpha=0.95)
    cfg.set_local(FALLBACK, StaticQuantConfig(w_dtype="fp32", act_dtype="fp32"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare(model, cfg, example_inputs=example, dynamic_shapes={k: {0: batch, 1: seq} for k in example})
    for feed in batches(calib, 16):
        prepared(**{k: torch.from_numpy(v) for k, v in feed.items()})
    q = convert(prepared)
    root = tmp_path_factory.mktemp("minilm_torch")
    paths = {b: q.save(root / b, backend=b) for b in ("onnx_qdq", "pt2e", "ipex")}
    feeds = batches(held_out, 16)
    with torch.no_grad():
        ref = np.concatenate([model(**{k: torch.from_numpy(v) for k, v in f.items()}).numpy() for f in feeds])
    return {"q": q, "paths": paths, "feeds": feeds, "ref": ref, "prepared": prepared, "state": model.state_dict(),
            "root": root}  # fmt: skip


def _cosine(runner: object, minilm: dict[str, object]) -> float:
    outs = [runner(f)[0] for f in minilm["feeds"]]  # type: ignore[operator, attr-defined]
    return mean_cosine(np.concatenate(outs), minilm["ref"])  # type: ignore[arg-type]


def test_minilm_cosine_at_least_as_good_as_onnx_qdq(minilm: dict[str, object]) -> None:
    from quantir.backends.onnx_qdq.verify import load as load_ort

    paths: dict[str, Path] = minilm["paths"]  # type: ignore[assignment]
    ort = _cosine(load_ort(paths["onnx_qdq"]), minilm)
    pt2e = _cosine(load_pt2e(paths["pt2e"], compile=False), minilm)
    ipex = _cosine(load_ipex(paths["ipex"]), minilm)
    print(
        f"\nMiniLM mean cosine vs FP32 on 96 held-out sentences: onnx_qdq {ort:.5f}, pt2e {pt2e:.5f}, ipex {ipex:.5f}"
    )
    assert pt2e >= ort - 1e-4 and ipex >= ort - 1e-4
    assert min(pt2e, ipex) >= 0.99


def test_minilm_every_linear_is_int8_in_both_artifacts_but_the_fallback(minilm: dict[str, object]) -> None:
    paths: dict[str, Path] = minilm["paths"]  # type: ignore[assignment]
    program, _ = load_program(paths["pt2e"])
    units = [u for u in program_units(program) if u["op"] == "linear"]
    assert len(units) == 36
    assert {u["module"] for u in units if not (u["weight_int8"] and u["activation_int8"])} == {FALLBACK}
    runner = load_pt2e(paths["pt2e"])
    _, code = generated_code(runner, minilm["feeds"][0])  # type: ignore[index]
    int8, floats = kernel_counts(code)
    print(f"\nMiniLM pt2e compiled: {dict(int8)}; float heavy kernels {dict(floats)}")
    assert int8["onednn.qlinear_pointwise"] == 35
    script, _ = load_script(paths["ipex"])
    linears = [int8 for kind, int8 in conv_linear_nodes(script.graph) if kind == "Gemm"]
    assert len(linears) == 36 and sum(linears) == 35


def test_minilm_fp8_gaudi_checkpoint_and_emulated_cosine(minilm: dict[str, object]) -> None:
    """Issue 13: the same calibrated MiniLM converted with `FP8Config()` (E4M3, maxabs_hw, Gaudi2 scales; statistics
    are config-independent) gives a checkpoint with all 36 Linear layers in float8_e4m3fn under their module paths,
    transposed to [in, out], whose CPU emulation keeps the embedding cosine >= 0.995 against FP32."""
    from quantir.backends.gaudi_fp8.verify import load as load_gaudi
    from quantir.backends.gaudi_fp8.verify import load_checkpoint, verify_gaudi_fp8
    from quantir.compiler.config.quant_config import FP8Config

    path = convert(minilm["prepared"], FP8Config()).save(minilm["root"] / "fp8", backend="gaudi_fp8")  # type: ignore[arg-type, operator]
    tensors = load_checkpoint(path / "model.safetensors")
    state: dict[str, torch.Tensor] = minilm["state"]  # type: ignore[assignment]
    linears = sorted(k[: -len(".scale_input")] for k in tensors if k.endswith(".scale_input"))
    assert len(linears) == 36 and "encoder.layer.5.output.dense" in linears
    for m in linears:
        out_f, in_f = state[f"{m}.weight"].shape
        assert tensors[f"{m}.weight"].dtype == torch.float8_e4m3fn and list(tensors[f"{m}.weight"].shape) == [
            in_f,
            out_f,
        ]
        assert float(tensors[f"{m}.scale_input"]) in (16.0, 1.0, 1 / 16, 1 / 256)  # the Gaudi2 hardware set
    assert tensors["embeddings.word_embeddings.weight"].dtype == torch.bfloat16
    norm = "encoder.layer.0.attention.output.LayerNorm.weight"
    assert torch.equal(tensors[norm], state[norm].to(torch.bfloat16))
    stats = json.loads((path / "hqt_output" / "measure_hooks_maxabs.json").read_text())
    assert sorted(stats["Nodes"]) == linears
    feeds: list[dict[str, np.ndarray]] = minilm["feeds"]  # type: ignore[assignment]
    report = verify_gaudi_fp8(path, feeds[0])
    assert report.ok, report.format()
    cosine = _cosine(load_gaudi(path), minilm)
    print(f"\nMiniLM FP8 (maxabs_hw, Gaudi2) emulated: mean cosine vs FP32 {cosine:.5f}")
    assert cosine >= 0.995, cosine
