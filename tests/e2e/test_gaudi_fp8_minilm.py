"""Issue 13 on the real all-MiniLM-L6-v2 (transformers BertModel + mean pooling): `FP8Config()` (E4M3, maxabs_hw,
Gaudi2 scales) gives a checkpoint with all 36 Linear layers in float8_e4m3fn under their module paths, transposed to
[in, out], whose CPU emulation keeps the embedding cosine >= 0.995 against FP32 on held-out sentences."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from quantir.backends.gaudi_fp8.verify import load as load_gaudi
from quantir.backends.gaudi_fp8.verify import load_checkpoint, verify_gaudi_fp8
from quantir.compiler.api import convert, prepare
from quantir.compiler.config.quant_config import FP8Config
from quantir.tools.minilm import batches, load_sentences, load_torch_model, mean_cosine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    model = load_torch_model()
    sentences = load_sentences()
    calib, held_out = sentences[:64], sentences[100:][:48]
    example = {k: torch.from_numpy(v) for k, v in batches(calib[:2], 2)[0].items()}
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=512)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare(model, FP8Config(), example_inputs=example, backend="gaudi_fp8",
                           dynamic_shapes={k: {0: batch, 1: seq} for k in example})  # fmt: skip
    for feed in batches(calib, 16):
        prepared(**{k: torch.from_numpy(v) for k, v in feed.items()})
    path = convert(prepared).save(tmp_path_factory.mktemp("minilm_fp8") / "ckpt", backend="gaudi_fp8")
    feeds = batches(held_out, 16)
    with torch.no_grad():
        ref = np.concatenate([model(**{k: torch.from_numpy(v) for k, v in f.items()}).numpy() for f in feeds])
    return {"path": path, "feeds": feeds, "ref": ref, "state": model.state_dict()}


def test_minilm_fp8_checkpoint_and_emulated_cosine(artifact: dict[str, object]) -> None:
    path: Path = artifact["path"]  # type: ignore[assignment]
    tensors = load_checkpoint(path / "model.safetensors")
    state: dict[str, torch.Tensor] = artifact["state"]  # type: ignore[assignment]
    linears = sorted(k[: -len(".scale_input")] for k in tensors if k.endswith(".scale_input"))
    assert len(linears) == 36 and "encoder.layer.5.output.dense" in linears
    for m in linears:
        w = tensors[f"{m}.weight"]
        out_f, in_f = state[f"{m}.weight"].shape
        assert w.dtype == torch.float8_e4m3fn and list(w.shape) == [in_f, out_f], m
        assert float(tensors[f"{m}.scale_input"]) in (16.0, 1.0, 1 / 16, 1 / 256)  # the Gaudi2 hardware set
    # every float parameter is there under its state-dict name, in bf16 (Linear weights in torch's [out, in])
    assert tensors["embeddings.word_embeddings.weight"].dtype == torch.bfloat16
    assert torch.equal(tensors["encoder.layer.0.attention.output.LayerNorm.weight"],
                       state["encoder.layer.0.attention.output.LayerNorm.weight"].to(torch.bfloat16))  # fmt: skip
    stats = json.loads((path / "hqt_output" / "measure_hooks_maxabs.json").read_text())
    assert sorted(stats["Nodes"]) == linears
    feeds: list[dict[str, np.ndarray]] = artifact["feeds"]  # type: ignore[assignment]
    report = verify_gaudi_fp8(path, feeds[0])
    assert report.ok, report.format()
    runner = load_gaudi(path)
    emulated = np.concatenate([runner(f)[0] for f in feeds])
    cosine = mean_cosine(emulated, artifact["ref"])  # type: ignore[arg-type]
    assert cosine >= 0.995, cosine
