"""The verify report of an artifact whose FP8 units its runtime emulates (casts to FP8 and back, the op in float),
shared by the backends that lower FP8 from the QDQ form (onnx_qdq: float8 Q/DQ in ORT; openvino: FakeConvert).

An emulated unit runs no low-precision kernel, so it is neither int8 coverage nor a miss: `coverage` counts the other
heavy ops, `coverage_text` says "emulated", and the node table marks those rows "emulated" instead of "yes"/"NO".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quantir.backends.contract import KernelRow, VerifyReport

__all__ = ["EMULATED", "EmulatedVerifyReport"]

EMULATED = "emulated"


@dataclass(slots=True)
class EmulatedVerifyReport(VerifyReport):
    """A `VerifyReport` where the runtime emulates some quantized units: `emulated` names them. Their rows have
    `int8=False` (no low-precision kernel runs), yet they are what the IR asked for, so they do not fail `ok`."""

    emulated: list[str] = field(default_factory=list)
    """Quantized IR nodes the runtime runs in float between FP8 casts (it has no FP8 kernel for them)."""

    @property
    def missed(self) -> list[KernelRow]:
        return [r for r in self.nodes if not r.int8 and r.name not in self.emulated]

    @property
    def coverage(self) -> float | None:
        """Share of the non-emulated quantized Conv/MatMul/Gemm that run a low-precision kernel (None: none)."""
        heavy = [r for r in self.heavy if r.name not in self.emulated]
        return sum(r.int8 for r in heavy) / len(heavy) if heavy else None

    def coverage_text(self) -> str:
        """`emulated (4/4 Conv/MatMul/Gemm ...)`, preceded by the int8 coverage of the other heavy ops if any."""
        heavy = self.heavy
        emulated = [r for r in heavy if r.name in self.emulated]
        if not emulated:
            return VerifyReport.coverage_text(self)
        text = (f"emulated ({len(emulated)}/{len(heavy)} Conv/MatMul/Gemm run in float between FP8 casts; no "
                "low-precision kernel)")  # fmt: skip
        rest = [r for r in heavy if r.name not in self.emulated]
        if rest:
            text = f"{sum(r.int8 for r in rest)}/{len(rest)} low precision, {text}"
        return text

    def format(self) -> str:
        lines = VerifyReport.format(self).split("\n")
        names = set(self.emulated)
        for i, line in enumerate(lines):  # the node table's last column: "NO" would read as a lost kernel
            if line.split(" ", 1)[0] in names and line.endswith("NO"):
                lines[i] = line[: -len("NO")] + EMULATED
        return "\n".join(lines)
