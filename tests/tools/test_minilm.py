"""all-MiniLM-L6-v2 export (offline, from the packaged weights), its tokenizer, the bundled sentences and the metric.

The export runs once per module in a child process with the Hugging Face hub forced offline and every proxy
pointing at a closed port, so any attempted download fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from quantir.tools.minilm import (
    CALIBRATION_COUNT,
    INPUT_NAMES,
    OUTPUT_NAME,
    embed,
    export_minilm,
    load_sentences,
    mean_cosine,
    model_dir,
    tokenize,
)

SENTENCES = [
    "The cat sat on the mat.",
    "Quantization stores each weight as an 8-bit integer with a per-channel scale, which cuts memory fourfold.",
    "Why?",
]


# ---- numpy-only checks first ---------------------------------------------------------------------------------------


def test_sentences_file_is_large_varied_and_split() -> None:
    lines = load_sentences()
    assert len(lines) >= 400 and len(set(lines)) == len(lines)
    assert len(lines) - CALIBRATION_COUNT >= 300
    words = [len(s.split()) for s in lines]
    assert min(words) >= 4 and max(words) <= 40
    assert sum(s.endswith("?") for s in lines) >= 40  # questions
    assert sum(any(c.isdigit() for c in s) for s in lines) >= 40  # numbers
    assert sum(n > 20 for n in words[:CALIBRATION_COUNT]) >= 3  # long sentences in the calibration set too


def test_mean_cosine() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 8)).astype(np.float32)
    assert mean_cosine(a, a) == pytest.approx(1.0)
    assert mean_cosine(a, 3.0 * a) == pytest.approx(1.0)  # rows are renormalized
    assert mean_cosine(a, -a) == pytest.approx(-1.0)
    assert mean_cosine(np.eye(2), np.eye(2)[::-1]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        mean_cosine(a, a[:4])


def test_tokenize_matches_transformers_tokenizer() -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(model_dir(), local_files_only=True)
    for max_len in (128, 12):
        ours = tokenize(SENTENCES, max_len)
        theirs = reference(SENTENCES, padding=True, truncation=True, max_length=max_len, return_tensors="np")
        for name in INPUT_NAMES:
            assert ours[name].dtype == np.int64
            np.testing.assert_array_equal(ours[name], theirs[name])
    fixed = tokenize(SENTENCES[:1], 128, fixed_length=True)
    assert fixed["input_ids"].shape == (1, 128) and fixed["attention_mask"].sum() < 128


# ---- the export (slow: torch.export runs once per module) ----------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(exported model, cache dir): exported from scratch in an offline child process."""
    root = tmp_path_factory.mktemp("minilm")
    cache, out = root / "cache", root / "minilm.onnx"
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens, so any network access fails
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "QUANTIR_CACHE_DIR": str(cache),
        "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "http_proxy": closed, "https_proxy": closed, "NO_PROXY": "",
    }  # fmt: skip
    code = f"from quantir.tools.minilm import export_minilm; print(export_minilm({str(out)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.exists() and len(list(cache.glob("*.onnx"))) == 1
    return out, cache


@pytest.mark.slow
def test_export_matches_torch_sentence_transformers_embedding(exported: tuple[Path, Path]) -> None:
    import torch
    from transformers import AutoModel

    path, _ = exported
    # Reference: the plain Hugging Face model plus sentence-transformers' mean pooling and normalization, written
    # out here independently of the export wrapper.
    model = AutoModel.from_pretrained(model_dir(), local_files_only=True).eval()
    feed = tokenize(SENTENCES)
    with torch.no_grad():
        hidden = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state.numpy()
    mask = feed["attention_mask"][:, :, None].astype(np.float32)
    pooled = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
    reference = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    # 3 sentences padded to 30-odd tokens: neither the batch nor the length the exporter traced with.
    ours = embed(path, SENTENCES)
    assert ours.shape == (3, 384)
    cos = (ours * reference).sum(axis=1) / np.linalg.norm(ours, axis=1)
    assert cos.min() > 0.9999, cos
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # One at a time (no padding) gives the same embeddings: the mask is honoured.
    single = np.concatenate([embed(path, [s]) for s in SENTENCES])
    assert mean_cosine(single, ours) > 0.9999


@pytest.mark.slow
def test_export_has_dynamic_axes_and_keeps_module_names(exported: tuple[Path, Path]) -> None:
    model = onnx.load(str(exported[0]))
    assert [i.name for i in model.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in model.graph.output] == [OUTPUT_NAME]
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        assert value.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in dims] == ["batch", "seq"]
    # The exporter's own opset (no version conversion, which would drop node metadata).
    assert {o.domain: o.version for o in model.opset_import}[""] >= 18

    scopes = [(n, p.value) for n in model.graph.node for p in n.metadata_props if p.key == "pkg.torch.onnx.name_scopes"]
    assert len(scopes) >= 0.9 * len(model.graph.node)
    query = [n for n, s in scopes if n.op_type == "MatMul" and "'encoder.layer.0.attention.self.query'" in s]
    assert len(query) == 1
    assert all(any(f"'encoder.layer.{i}'" in s for _, s in scopes) for i in range(6))
    initializers = {t.name for t in model.graph.initializer}
    assert {"encoder.layer.0.attention.self.query.weight", "embeddings.word_embeddings.weight"} <= initializers
    meta = {p.key: p.value for p in model.metadata_props}
    assert "all-MiniLM-L6-v2" in meta["quantir.source"] and "mean pooling" in meta["quantir.output"]


@pytest.mark.slow
def test_export_is_cached(exported: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path, cache = exported
    monkeypatch.setenv("QUANTIR_CACHE_DIR", str(cache))
    cached = export_minilm()  # no out_path: the cached file itself, without exporting again
    assert cached.parent == cache and cached.read_bytes() == path.read_bytes()
    copy = export_minilm(tmp_path / "sub" / "copy.onnx")
    assert copy.read_bytes() == path.read_bytes()
    assert list(cache.iterdir()) == [cached]  # no partial files left behind
