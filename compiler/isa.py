"""CPU instruction-set detection, and the int8 defaults that follow from it.

On x86 without VNNI, u8 x s8 dot products go through `vpmaddubsw`, whose int16 pair sums saturate; 7-bit
weights (reduce_range) avoid that. With VNNI (AVX512-VNNI or AVX-VNNI), AMX, or ARM dot-product
instructions, full 8-bit ranges are exact.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = ["CpuFeatures", "default_reduce_range", "detect_cpu"]

_CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True, slots=True)
class CpuFeatures:
    arch: str
    """`x86_64`, `aarch64`, ..."""
    model: str
    avx2: bool = False
    avx512: bool = False
    vnni: bool = False
    """AVX512-VNNI or AVX-VNNI: non-saturating u8 x s8 dot products."""
    amx: bool = False
    arm_dotprod: bool = False

    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "amd64", "i686", "x86")

    @property
    def int8_saturates(self) -> bool:
        """True where u8 x s8 int8 GEMM kernels can saturate (x86 with neither VNNI nor AMX)."""
        return self.is_x86 and not (self.vnni or self.amx)

    def describe(self) -> str:
        flags = [n for n, on in (("AVX2", self.avx2), ("AVX512", self.avx512), ("VNNI", self.vnni),
                                 ("AMX", self.amx), ("ARM dotprod", self.arm_dotprod)) if on]  # fmt: skip
        return f"{self.model or self.arch} ({', '.join(flags) or 'no int8 dot-product extensions'})"


def parse_cpuinfo(text: str, arch: str) -> CpuFeatures:
    """Features from the text of /proc/cpuinfo (x86 `flags`, ARM `Features`)."""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "cpu model") and not model:
            model = value.strip()
    return CpuFeatures(
        arch=arch,
        model=model,
        avx2="avx2" in flags,
        avx512="avx512f" in flags,
        vnni=bool({"avx512_vnni", "avx_vnni", "avx512vnni", "avxvnni"} & flags),
        amx=bool({"amx_int8", "amx_tile"} & flags),
        arm_dotprod="asimddp" in flags,
    )


@cache
def detect_cpu() -> CpuFeatures:
    """This machine's features; QUANTIR_CPU_FLAGS (space-separated) overrides the flags for testing."""
    arch = platform.machine().lower()
    override = os.environ.get("QUANTIR_CPU_FLAGS")
    if override is not None:
        return parse_cpuinfo(f"flags : {override}\nmodel name : QUANTIR_CPU_FLAGS override", arch)
    try:
        text = _CPUINFO.read_text()
    except OSError:
        text = ""
    return parse_cpuinfo(text, arch)


def default_reduce_range(cpu: CpuFeatures | None = None) -> bool:
    """7-bit weights by default exactly where int8 kernels can saturate; the user can override it."""
    return (cpu or detect_cpu()).int8_saturates
