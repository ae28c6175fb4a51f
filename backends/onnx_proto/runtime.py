"""ONNX Runtime sessions on the CPU, made one way everywhere: calibration, the callable quantized model, the
reference (unoptimized) runs of verification, and the tools.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["OrtRunner", "ort_session", "run_all"]

OptLevel = Literal["none", "basic", "extended", "all"]

_LEVELS = {
    "none": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def ort_session(
    model: str | os.PathLike[str] | bytes,
    *,
    level: OptLevel = "all",
    threads: int | None = None,
    optimized_to: Path | None = None,
    config: Mapping[str, str] | None = None,
) -> Any:
    """A quiet CPU session of `model` (a path or serialized bytes); `level="none"` runs the graph as written (for a
        QDQ model: the IR's fake-quant semantics, Q/DQ executed as float kernels). `optimized_to` has ORT save the graph
        it optimized there (weights over 1 KiB beside it in `<name>.data`). `config` holds session config entries (an
    artifact's `session_config`, e.g. FP8's `session.disable_quant_qdq`)."""
    import onnxruntime as ort  # loaded on first use: the IR tools that only read and write models never need it

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
    if threads is not None:
        opts.intra_op_num_threads = threads
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    if optimized_to is not None:
        opts.optimized_model_filepath = os.fspath(optimized_to)
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", optimized_to.name + ".data"
        )
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    source = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def run_all(session: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of `session` on `inputs`, by name."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, (np.asarray(a) for a in session.run(names, inputs)), strict=True))


class OrtRunner:
    """An ONNX model in an ORT CPU session, as the contract's `Runner`: feed dict in, outputs in model order out."""

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        level: OptLevel = "all",
        threads: int | None = None,
        config: Mapping[str, str] | None = None,
    ) -> None:
        self.session = ort_session(model, level=level, threads=threads, config=config)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(a) for a in self.session.run(self.output_names, dict(inputs))]
