"""Node provenance from ONNX `metadata_props`: which source module (path and type) a node came from.

Read, in order of preference:

* `quantir.source.module` / `quantir.source.type`, which quantir's own ONNX emission writes;
* `pkg.torch.onnx.name_scopes` / `pkg.torch.onnx.class_hierarchy`, which torch.onnx's dynamo exporter writes
  as Python list literals, e.g. `['', 'layer1', 'layer1.0', 'layer1.0.conv1', 'conv2d']` and
  `['__main__.Net', ..., 'torch.nn.modules.conv.Conv2d', 'aten.conv2d.default']`. The exporter appends the
  FX node itself (name, op target) as the last entry, and marks its nodes with `pkg.torch.onnx.fx_node`;
  that entry is dropped, so the conv above comes from `layer1.0.conv1` of type `torch.nn.modules.conv.Conv2d`,
  and a functional op directly in the root module from `""` of the root's type.

Scope entries are full dotted paths in current torch; relative entries (`['', 'layer1', '0']`) are joined with dots.
"""

from __future__ import annotations

import ast
import re

import onnx

from quantir.ir import SourceInfo

__all__ = ["source_of"]

QUANTIR_MODULE = "quantir.source.module"
QUANTIR_TYPE = "quantir.source.type"
TORCH_SCOPES = "pkg.torch.onnx.name_scopes"
TORCH_CLASSES = "pkg.torch.onnx.class_hierarchy"
TORCH_FX_NODE = "pkg.torch.onnx.fx_node"

_PLACEHOLDER = "_empty_nn_module_stack_from_metadata_hook"
"""What the exporter writes for nodes with no module stack (e.g. symbolic size ops): no provenance."""

_OP_TARGET = re.compile(r"^(<built-in|(aten|prims|quantized_decomposed|quantized|_operator|operator)\.)")
"""A class-hierarchy entry that is an op target (the exporter's trailing FX-node entry), not a module class."""


def _literal_list(text: str) -> list[str] | None:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value):
        return list(value)
    return None


def _module_path(scopes: list[str]) -> str:
    path = ""
    for entry in scopes:
        if not entry:
            continue
        if not path or entry == path or entry.startswith(path + "."):
            path = entry
        else:
            path = f"{path}.{entry}"
    return path


def source_of(node: onnx.NodeProto) -> SourceInfo | None:
    """The provenance recorded on `node`, or None when it carries none."""
    props = {p.key: p.value for p in node.metadata_props}
    if QUANTIR_MODULE in props:
        return SourceInfo(props[QUANTIR_MODULE], props.get(QUANTIR_TYPE, ""))
    scopes = _literal_list(props.get(TORCH_SCOPES, ""))
    classes = _literal_list(props.get(TORCH_CLASSES, "")) or []
    if scopes is None or (scopes and scopes[0] == _PLACEHOLDER):
        return None
    trailing_op = TORCH_FX_NODE in props or bool(classes and _OP_TARGET.match(classes[-1]))
    if trailing_op:
        scopes, classes = scopes[:-1], classes[:-1]
    if not scopes and not classes:
        return None
    return SourceInfo(_module_path(scopes), classes[-1] if classes else "")
