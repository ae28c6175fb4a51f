"""`quantir demo` (README's main job) end to end: the one quantized IR saved for every registered backend, each
verified in its runtime, accurate on the held-out digits, and compared across runtimes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quantir.backends.registry import backend_names
from quantir.tools.demo import run_demo


def test_demo_converts_to_every_backend_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(str(tmp_path)) == 0
    out = capsys.readouterr().out
    for name in backend_names():
        assert re.search(rf"^{name}\s+.*coverage 100% \(4/4 Conv/MatMul/Gemm\).*; ok$", out, re.MULTILINE), out
        top1 = re.search(rf"^{name}\s+held-out top-1 on 597 images: FP32 ([\d.]+)%, int8 ([\d.]+)%", out, re.MULTILINE)
        assert top1 is not None and float(top1[2]) >= float(top1[1]) - 0.5, out
        assert (tmp_path / "all" / name / "quantir.json").is_file()
    lsb = re.search(r"^cross .* = ([\d.]+) LSB", out, re.MULTILINE)
    assert lsb is not None and float(lsb[1]) <= 1.0, out
    assert "text IR round trip exact" in out
