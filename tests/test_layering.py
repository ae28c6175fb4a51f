"""The dependency direction of ARCHITECTURE.md §1, checked on every import statement in the source tree:
tools -> compiler -> {frontends, backends} -> ir, and ir imports only numpy, lark and the stdlib.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("ir", "compiler", "frontends", "backends", "tools")
# Backends may share these packages with each other (ARCHITECTURE.md §1): the contract every backend implements, the
# legality checks they share, and the ONNX lowering.
SHARED_BACKENDS = (
    "quantir.backends.contract", "quantir.backends.legality", "quantir.backends.onnx_proto",
    "quantir.backends.torch_codegen",
)  # fmt: skip

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "ir": ("quantir.compiler", "quantir.frontends", "quantir.backends", "quantir.tools"),
    "frontends": ("quantir.compiler", "quantir.backends", "quantir.tools"),
    "backends": ("quantir.compiler", "quantir.frontends", "quantir.tools"),
    "compiler": ("quantir.tools",),
    "tools": (),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _sources(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_respect_dependency_direction(layer: str) -> None:
    problems: list[str] = []
    for path in _sources(layer):
        for line, module in _imports(path):
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            top = module.split(".")[0]
            if top in LAYERS:
                problems.append(f"{where} (import quantir.{top}, not the top-level folder)")
            if any(module == f or module.startswith(f + ".") for f in FORBIDDEN[layer]):
                problems.append(f"{where} (against the layering)")
            if layer == "ir" and top not in ("quantir", "numpy", "lark") and top not in sys.stdlib_module_names:
                problems.append(f"{where} (ir/ may import only numpy, lark and the standard library)")
            if layer == "backends" and module.startswith("quantir.backends."):
                own = "quantir.backends." + path.relative_to(ROOT / "backends").parts[0]
                if not module.startswith(own) and not module.startswith(SHARED_BACKENDS):
                    problems.append(f"{where} (backends never import each other)")
    assert not problems, "\n".join(problems)


def test_every_layer_has_sources() -> None:
    assert all(_sources(layer) for layer in LAYERS)
