"""ISA detection from /proc/cpuinfo text, and the reduce_range default that follows."""

from __future__ import annotations

from quantir.compiler.isa import default_reduce_range, detect_cpu, parse_cpuinfo

EPYC_AVX2 = "processor : 0\nmodel name : AMD EPYC 7B12\nflags : fpu sse4_2 avx avx2 fma\n"
EPYC_VNNI = "model name : AMD EPYC 9B14\nflags : avx2 avx512f avx512_vnni avx512_bf16\n"
SPR = "model name : Intel Xeon Platinum 8480+\nflags : avx2 avx512f avx512_vnni amx_tile amx_int8\n"
GRAVITON = "processor : 0\nFeatures : fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp\n"


def test_x86_without_vnni_defaults_to_reduced_range() -> None:
    cpu = parse_cpuinfo(EPYC_AVX2, "x86_64")
    assert cpu.avx2 and not cpu.vnni and cpu.int8_saturates
    assert default_reduce_range(cpu) is True
    assert cpu.describe() == "AMD EPYC 7B12 (AVX2)"


def test_vnni_and_amx_use_full_range() -> None:
    assert default_reduce_range(parse_cpuinfo(EPYC_VNNI, "x86_64")) is False
    spr = parse_cpuinfo(SPR, "x86_64")
    assert spr.amx and spr.vnni and default_reduce_range(spr) is False


def test_arm_dotprod_never_saturates() -> None:
    cpu = parse_cpuinfo(GRAVITON, "aarch64")
    assert cpu.arm_dotprod and not cpu.is_x86
    assert default_reduce_range(cpu) is False


def test_this_machine_is_detected() -> None:
    cpu = detect_cpu()
    assert cpu.arch
    assert default_reduce_range(cpu) == cpu.int8_saturates
