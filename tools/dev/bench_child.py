"""One measured conversion of `quantir bench` (or the FP32 floor), run alone in a fresh process.

`python -m quantir.tools.dev.bench_child SPEC_JSON RESULT_PATH`. Before its clock starts this module has loaded only
the standard library, numpy and the calibration data, so each tool's own imports are timed (`import_s`) apart from
its conversion call (`seconds`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DIGITS_BATCH", "MINILM_BATCH", "MINILM_SEQ", "OV_TOOLS", "SMOOTH_ALPHA", "calib_batches"]

OV_TOOLS = ("nncf", "quantir-ov", "quantir-sq-ov", "quantir-dynamic-ov", "nncf-woq", "quantir-rtn-ov")
"""Tools whose artifact is an OpenVINO IR, measured in OpenVINO (CPU plugin) rather than ORT."""
SMOOTH_ALPHA = 0.95
"""quantir-sq: SmoothQuant with NNCF's published transformer alpha (not tuned on the held-out data)."""
DIGITS_BATCH, MINILM_BATCH, MINILM_SEQ = 32, 16, 128


def calib_batches(name: str, factor: int = 1) -> tuple[Callable[[], Iterator[dict[str, np.ndarray]]], int]:
    """A factory of calibration batch streams (nothing is buffered) and the number of samples it yields."""
    if name == "digits":
        from quantir.tools.digits import load_digits_split

        x = load_digits_split().calib_x

        def digits() -> Iterator[dict[str, np.ndarray]]:
            for _ in range(factor):
                for i in range(0, len(x), DIGITS_BATCH):
                    yield {"x": x[i : i + DIGITS_BATCH]}

        return digits, len(x) * factor
    from quantir.tools.minilm import CALIBRATION_COUNT, load_sentences, tokenize

    sentences = load_sentences()[:CALIBRATION_COUNT] * factor

    def minilm() -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(sentences), MINILM_BATCH):
            yield tokenize(sentences[i : i + MINILM_BATCH], MINILM_SEQ)

    return minilm, len(sentences)


def _peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM belongs to the current address space; on Linux ru_maxrss (and the parent's
    RUSAGE_CHILDREN) keeps the parent's RSS across fork+exec (a 10 MB child of a 263 MB parent reads 263 MB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    tool, src, out_dir = spec["tool"], spec["source"], Path(spec["out_dir"])
    stream, samples = calib_batches(spec["model"], spec["factor"])
    result: dict[str, Any] = {"samples": samples}
    imported = time.perf_counter()
    if tool == "fp32":
        import onnxruntime as ort

        session = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
        session.run(None, next(stream()))  # warm-up: the floor is the steady-state pass
        start = time.perf_counter()
        for feed in stream():
            session.run(None, feed)
    elif tool == "ort":
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from quantir.tools.dev.ort_baseline import ort_quantize_static

        pre = out_dir / "preprocessed.onnx"
        start = time.perf_counter()
        quant_pre_process(src, pre, skip_symbolic_shape=spec.get("skip_symbolic_shape", False))
        result["preprocess_s"] = time.perf_counter() - start
        ort_quantize_static(pre, out_dir / "model.onnx", stream())
    elif tool in ("ort-dynamic", "ort-nbits"):
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer, RTNWeightOnlyQuantConfig
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = out_dir / "preprocessed.onnx"
        start = time.perf_counter()
        quant_pre_process(src, pre, skip_symbolic_shape=spec.get("skip_symbolic_shape", False))
        if tool == "ort-dynamic":  # per channel: MiniLM cos 0.9935 (the per-tensor default: 0.9667), same speed
            quantize_dynamic(pre, out_dir / "model.onnx", weight_type=QuantType.QInt8, per_channel=True)
        else:
            nbits = MatMulNBitsQuantizer(onnx.load(pre), block_size=32, is_symmetric=True,
                                         algo_config=RTNWeightOnlyQuantConfig())  # fmt: skip
            nbits.process()
            nbits.model.save_model_to_file(str(out_dir / "model.onnx"), use_external_data_format=False)
    elif tool == "nncf-woq":
        import nncf  # type: ignore[import-untyped]  # may ship no type information
        import openvino as ov

        start = time.perf_counter()
        compressed = nncf.compress_weights(ov.convert_model(src), mode=nncf.CompressWeightsMode.INT4_SYM,
                                           group_size=32, ratio=1.0)  # fmt: skip
        (out_dir / "artifact").mkdir(parents=True, exist_ok=True)
        ov.save_model(compressed, out_dir / "artifact" / "model.xml", compress_to_fp16=False)
    elif tool in (
        "quantir-dynamic",
        "quantir-dynamic-ov",
        "quantir-rtn",
        "quantir-rtn-ov",
        "quantir-gptq",
        "quantir-awq",
    ):
        from quantir.compiler.api import quantize
        from quantir.compiler.config.dynamic_config import DynamicQuantConfig
        from quantir.compiler.config.weight_only_config import AWQConfig, GPTQConfig, RTNConfig

        start = time.perf_counter()
        if tool == "quantir-gptq":  # the calibration batches every tool gets (GPTQ reads the Hessians of them)
            quantized = quantize(src, GPTQConfig(block_size=128, calibration_sampling_size=samples), stream())
        elif tool == "quantir-awq":
            quantized = quantize(src, AWQConfig(calibration_sampling_size=samples), stream())
        else:
            quantized = quantize(src, DynamicQuantConfig() if "dynamic" in tool else RTNConfig())
        quantized.save(out_dir / "artifact", backend="openvino" if tool in OV_TOOLS else None)
        result["seconds"] = time.perf_counter() - start
        (out_dir / "report.txt").write_text(str(quantized.report()))
    elif tool == "nncf":
        import nncf  # type: ignore[import-untyped]  # may ship no type information
        import openvino as ov

        items = list(stream())
        start = time.perf_counter()
        float_model = ov.convert_model(src)
        quantized_ov = nncf.quantize(float_model, nncf.Dataset(items), subset_size=len(items))
        (out_dir / "artifact").mkdir(parents=True, exist_ok=True)
        ov.save_model(quantized_ov, out_dir / "artifact" / "model.xml", compress_to_fp16=False)
    else:
        from quantir.compiler.api import quantize
        from quantir.compiler.config.quant_config import StaticQuantConfig

        start = time.perf_counter()
        if tool in ("quantir-sq", "quantir-sq-ov"):  # SmoothQuant forced on, with the transformer alpha
            cfg = StaticQuantConfig(
                calibration_sampling_size=samples, smooth_quant=True, smooth_quant_alpha=SMOOTH_ALPHA
            )
        else:  # the default: SmoothQuant where the IR has transformer blocks (recorded in report.txt)
            cfg = StaticQuantConfig(calibration_sampling_size=samples)
        quantized = quantize(src, cfg, stream())
        quantized.save(out_dir / "artifact", backend="openvino" if tool in OV_TOOLS else None)
        result["seconds"] = time.perf_counter() - start
        (out_dir / "report.txt").write_text(str(quantized.report()))
    result["import_s"] = start - imported
    result.setdefault("seconds", time.perf_counter() - start)
    result["peak_rss_mb"] = _peak_rss_mb()
    onnx_out = str(out_dir / "model.onnx")
    result["model"] = {"fp32": src, "ort": onnx_out, "ort-dynamic": onnx_out, "ort-nbits": onnx_out}.get(
        tool, str(out_dir / "artifact" / ("model.xml" if tool in OV_TOOLS else "model.onnx"))
    )
    return result


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(json.dumps(_child(json.loads(sys.argv[1]))))
