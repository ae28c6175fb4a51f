"""The one exception hierarchy of quantir.

Every error a user can see derives from `QuantirError`; each names what is wrong and where.
"""

from __future__ import annotations

__all__ = [
    "CalibrationError",
    "ConfigError",
    "FrontendError",
    "IRError",
    "ParseError",
    "PassError",
    "QuantirError",
    "RuntimeCrashError",
    "SerializationError",
    "UnsupportedOpError",
    "UseListError",
    "VerifyError",
]


class QuantirError(Exception):
    """Base of every error quantir raises on purpose."""


class IRError(QuantirError):
    """Misuse of the IR API (e.g. erasing a node whose results are still used)."""


class UseListError(IRError):
    """An operation would leave use lists inconsistent."""


class VerifyError(QuantirError):
    """The verifier found a structural or quantization-type violation."""


class ParseError(QuantirError):
    """The textual IR could not be parsed; the message shows line, column and a caret."""

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.column = column


class SerializationError(QuantirError):
    """A sidecar or artifact could not be read or written."""


class FrontendError(QuantirError):
    """A model given to a frontend cannot be imported."""


class UnsupportedOpError(FrontendError):
    """An op, attribute or type the IR refuses to represent."""


class PassError(QuantirError):
    """A compiler pass failed; the message names the pass and the pipeline before it."""


class ConfigError(QuantirError):
    """An invalid user configuration value."""


class CalibrationError(QuantirError):
    """Calibration data cannot give a range (NaN/Inf values, no batches, inconsistent shapes)."""


class RuntimeCrashError(QuantirError):
    """A target runtime crashed, hung or failed running an artifact (checked in a child process, so the crash
    reaches the user as this error instead of killing quantir)."""
