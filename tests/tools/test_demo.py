"""`quantir demo` (README's main job) end to end: the one quantized IR saved for every registered backend, each
verified in its runtime, accurate on the held-out digits, and compared across runtimes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quantir.backends.registry import backend_names, get_backend
from quantir.tools.demo import run_demo


def test_demo_converts_to_every_backend_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(str(tmp_path)) == 0
    out = capsys.readouterr().out
    fp32 = None
    for name in backend_names():
        assert re.search(rf"^{name}\s+.*coverage 100% \(4/4 Conv/MatMul/Gemm\).*; ok$", out, re.MULTILINE), out
        # a torch backend has no float model in its own runtime: its int8 is held against ONNX Runtime's FP32
        top1 = re.search(rf"^{name}\s+held-out top-1 on 597 images: (?:FP32 ([\d.]+)%, )?(?:int8|fp8) ([\d.]+)%", out,
                         re.MULTILINE)  # fmt: skip
        assert top1 is not None, out
        fp32 = float(top1[1]) if top1[1] is not None else fp32
        assert fp32 is not None and float(top1[2]) >= fp32 - 0.5, out
        folder = "fp8" if get_backend(name).fp8_only else "all"
        assert (tmp_path / folder / name / "quantir.json").is_file()
    int8 = [n for n in backend_names() if not get_backend(n).fp8_only]
    lsb = re.findall(r"^cross .* = ([\d.]+) LSB", out, re.MULTILINE)
    assert len(lsb) == len(int8) - 1 and all(float(x) <= 1.0 for x in lsb), out
    assert "text IR round trip exact" in out
