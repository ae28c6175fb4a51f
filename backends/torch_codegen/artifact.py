"""The artifact folder of a torch backend, shared by `ipex` and `pt2e`: the torch model file the backend writes,
`model.qdq.onnx` (the legalized IR's fake-quant semantics, which `verify` runs in ONNX Runtime as the reference)
and `quantir.json`, written atomically; plus the numpy `Runner` over a torch callable and the output comparison.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantir.backends.contract import CapabilityTable, KernelRow, VerifyReport, check_outputs
from quantir.backends.onnx_proto import ort_session, run_all, save_model
from quantir.backends.onnx_proto.artifact import (
    SCHEMA,
    check_destination,
    ir_sha256,
    manifest_text,
    output_quantization,
    read_manifest,
    write_artifact,
)
from quantir.backends.onnx_proto.qdq import lower_to_qdq, node_names
from quantir.backends.torch_codegen.legalize import quantized_units
from quantir.backends.torch_codegen.module import QuantFlavor, build_module, example_inputs, input_names
from quantir.ir import Graph, SerializationError

__all__ = [
    "REFERENCE_FILE", "TorchRunner", "compare_outputs", "emit_torch", "load_model_file", "match_kernels", "quiet",
    "read_torch_manifest",
]  # fmt: skip

REFERENCE_FILE = "model.qdq.onnx"
_RESERVED = ("schema", "backend", "model", "reference", "ir_sha256", "quantized_nodes", "outputs", "torch")

WriteModel = Callable[[Path, torch.nn.Module, tuple[torch.Tensor, ...], tuple[Any, ...]], dict[str, Any]]
"""`write(folder, module, example_inputs, dynamic_shapes) -> backend facts for the manifest`: writes the model."""


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torch's tracers warn about deprecations (TorchScript, quantized tensors) that say nothing about the model."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # type: ignore[attr-defined]
        warnings.filterwarnings("ignore", message=r".*quantized tensor.*|.*quint8.*|.*qint8.*")
        warnings.filterwarnings("ignore", message=r"To copy construct from a tensor")  # Inductor's qconv lowering
        yield


def emit_torch(graph: Graph, out_dir: str | os.PathLike[str], *, manifest: dict[str, Any], backend: str,
               model_file: str, flavor: QuantFlavor, table: CapabilityTable, write: WriteModel) -> Path:  # fmt: skip
    """Generate the torch module for the legalized `graph`, let the backend write its model file, write the QDQ
    reference and the manifest, all into `out_dir` atomically."""
    clash = sorted(k for k in manifest if k in _RESERVED)
    if clash:
        raise SerializationError(f"manifest keys {clash} are written by the {backend} emitter; rename them")
    out = Path(out_dir).absolute()
    check_destination(out)
    module = build_module(graph, flavor)
    examples, shapes = example_inputs(graph)
    names = dict(zip(graph.nodes, node_names(graph), strict=True))
    unit_names: dict[str, str] = getattr(module, "unit_names", {})
    units = [{"name": names[n], "op_type": n.op_type, "module": n.source.module if n.source else "",
              "unit": unit_names.get(names[n], "")} for n in quantized_units(graph, table)]  # fmt: skip
    lowered = lower_to_qdq(graph, guard_float_weights=False, dynamic=False)
    holder: dict[str, Any] = {}

    def write_all(tmp: Path) -> None:
        try:
            with quiet(), torch.no_grad():
                holder["facts"] = write(tmp, module, examples, shapes)
        except SerializationError:
            raise
        except Exception as e:  # torch's tracers raise many types; the message says which step failed
            raise SerializationError(f"torch could not trace the generated module for {os.fspath(out)!r}: "
                                     f"{type(e).__name__}: {e}") from e  # fmt: skip
        save_model(lowered, tmp / REFERENCE_FILE)

    def manifest_doc() -> str:
        doc: dict[str, Any] = {
            "schema": SCHEMA, "backend": backend, "model": model_file, "reference": REFERENCE_FILE,
            "ir_sha256": ir_sha256(graph), "quantized_nodes": units, "outputs": output_quantization(graph),
            "torch": {"version": torch.__version__, "inputs": input_names(graph),
                      "outputs": [v.name for v in graph.outputs], **holder["facts"]},
        }  # fmt: skip
        doc.update(manifest)
        return manifest_text(doc, out)

    return write_artifact(out, write_all, manifest_doc)


def read_torch_manifest(folder: Path, backend: str) -> dict[str, Any]:
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("backend") != backend:
        raise SerializationError(f"{os.fspath(folder)!r} is not a quantir {backend} artifact")
    return manifest


def load_model_file(artifact_dir: str | os.PathLike[str], backend: str, default: str,
                    loader: Callable[[str], Any], how: str) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """`loader(path)` of the model file the manifest names (`default` if none), and the manifest; a bad archive is a
    `SerializationError` naming the file and `how` it was read."""
    folder = Path(artifact_dir)
    manifest = read_torch_manifest(folder, backend)
    path = folder / manifest.get("model", default)
    try:
        with quiet():
            return loader(os.fspath(path)), manifest
    except Exception as e:  # torch's loaders raise RuntimeError and others for a bad archive
        raise SerializationError(f"{how} cannot read {os.fspath(path)!r}: {e}") from e


class TorchRunner:
    """A torch callable as the contract's `Runner`: named numpy inputs in, numpy outputs in model order out."""

    def __init__(self, fn: Callable[..., Any], input_names: list[str], output_names: list[str],
                 threads: int | None = None) -> None:  # fmt: skip
        self.fn, self.input_names, self.output_names, self.threads = fn, input_names, output_names, threads

    def torch_call(self, *args: torch.Tensor) -> Any:
        """Run on torch tensors, returning what the module returns."""
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            with torch.no_grad():
                return self.fn(*args)
        finally:
            torch.set_num_threads(previous)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise SerializationError(f"missing input(s) {missing}; the model takes {self.input_names}")
        out = self.torch_call(*(torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self.input_names))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return [o.detach().numpy() for o in outs]


def compare_outputs(report: VerifyReport, folder: Path, manifest: dict[str, Any], runner: TorchRunner,
                    inputs: dict[str, np.ndarray], max_lsb: float, max_rel: float, runtime: str) -> None:  # fmt: skip
    """The artifact's outputs on `inputs` against the IR's fake-quant reference (ORT, no graph optimization)."""
    ref = run_all(ort_session(folder / manifest.get("reference", REFERENCE_FILE), level="none"), inputs)
    check_outputs(report, runtime, runner.output_names, runner(inputs), ref, manifest.get("outputs", {}), max_lsb,
                  max_rel)  # fmt: skip


def match_kernels(
    units: list[dict[str, Any]], found: list[tuple[str, str]], kinds: Mapping[str, str]
) -> list[KernelRow]:
    """Quantized IR units against the int8 kernels the runtime shows (kind, description), matched by kind in
    execution order (the runtime's graph has no IR names): a unit with no kernel left of its kind is not int8."""
    spare = list(found)
    rows = []
    for u in units:
        want = kinds[u["op_type"]]
        hit = next((k for k in spare if k[0] == want), None)
        if hit is not None:
            spare.remove(hit)
        rows.append(
            KernelRow(u["name"], u["op_type"], u.get("module", ""), want, hit[1] if hit else "", hit is not None)
        )
    return rows
