"""The registry of backends: lazy loaders for the built-in ones, `register` for more (a plugin, or a test's toy
backend). compiler/ and tools/ find backends only here; no backend name is spelled anywhere else.

Loading a built-in backend imports its `backend.py`, which imports no runtime: ONNX Runtime and OpenVINO are
imported when an artifact is emitted, verified or loaded.
"""

from __future__ import annotations

import importlib

from quantir.backends.contract import Backend
from quantir.ir import ConfigError

__all__ = ["DEFAULT_BACKEND", "backend_names", "get_backend", "register", "unregister"]

_BUILTIN: dict[str, str] = {
    "onnx_qdq": "quantir.backends.onnx_qdq.backend",
    "openvino": "quantir.backends.openvino.backend",
    "pt2e": "quantir.backends.pt2e.backend",
    "ipex": "quantir.backends.ipex.backend",
    "gaudi_fp8": "quantir.backends.gaudi_fp8.backend",
}
"""Built-in backend name -> the module whose `BACKEND` describes it."""

DEFAULT_BACKEND = "onnx_qdq"
"""What `prepare`/`quantize` target when the caller names no backend."""

_LOADED: dict[str, Backend] = {}


def register(backend: Backend, *, replace: bool = False) -> Backend:
    """Make `backend` available under its name and aliases (it must not shadow another backend's names)."""
    if not isinstance(backend, Backend):
        raise TypeError(f"register() takes a quantir.backends.contract.Backend, got {type(backend).__name__}")
    for other in list(_LOADED.values()):
        clash = set(backend.names) & set(other.names)
        if clash and other.name != backend.name:
            raise ConfigError(f"backend {backend.name!r} reuses the name(s) {sorted(clash)} of {other.name!r}")
        if other.name == backend.name and not replace and other is not backend:
            raise ConfigError(f"a backend named {backend.name!r} is already registered")
    _LOADED[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    _LOADED.pop(name, None)


def _load_builtins() -> None:
    for name, module in _BUILTIN.items():
        if name not in _LOADED:
            register(importlib.import_module(module).BACKEND)


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def get_backend(name: str | Backend) -> Backend:
    """The backend called `name` (or one of its aliases; `-` and `_` are the same)."""
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str):
        raise ConfigError(f"a backend is named by a string, got {type(name).__name__}")
    key = _key(name)
    if key in _BUILTIN and key not in _LOADED:
        register(importlib.import_module(_BUILTIN[key]).BACKEND)
    for backend in _LOADED.values():
        if key in {_key(n) for n in backend.names}:
            return backend
    _load_builtins()
    for backend in _LOADED.values():
        if key in {_key(n) for n in backend.names}:
            return backend
    raise ConfigError(f"unknown backend {name!r}; expected one of {', '.join(backend_names())}")


def backend_names() -> tuple[str, ...]:
    """Every registered backend's name, built-in ones first."""
    _load_builtins()
    return (*_BUILTIN, *(n for n in _LOADED if n not in _BUILTIN))
