"""The HTML tuning report: content, escaping, atomic write, bad input, and real rendering in headless Chromium."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from quantir.compiler.tuning.report import write_html_report
from quantir.ir import QuantirError

EVIL_CONFIG = 'StaticQuantConfig(w_granularity="per_channel") <script>alert("x")</script>'
PLOT_IDS = ("quantir-plot-trials", "quantir-plot-sensitivity", "quantir-plot-coverage")


def make_summary() -> dict[str, Any]:
    """A realistic summary: 2 config trials miss the goal, 1 crashes, 2 sensitivity trials, 1 fallback passes."""
    baseline = 0.8214
    goal = baseline * (1 - 0.01)
    trials = [
        {"index": 0, "phase": "config", "config": "StaticQuantConfig(act_sym=False, w_granularity='per_tensor')",
         "result": 0.7791, "seconds": 11.8, "passed": False, "error": None},
        {"index": 1, "phase": "config", "config": EVIL_CONFIG,
         "result": 0.8007, "seconds": 12.4, "passed": False, "error": None},
        {"index": 2, "phase": "config", "config": "StaticQuantConfig(calibration='kl', act_dtype='int8')",
         "result": None, "seconds": 3.1, "passed": False,
         "error": "RuntimeCrashError: onnxruntime aborted in QLinearConv (node /layer1/conv2) & exit code -6"},
        {"index": 3, "phase": "sensitivity", "config": "per_channel + keep float: /classifier/fc",
         "result": 0.8049, "seconds": 10.2, "passed": False, "error": None},
        {"index": 4, "phase": "sensitivity", "config": "per_channel + keep float: /layer4/attn/MatMul_qk",
         "result": 0.8101, "seconds": 10.6, "passed": False, "error": None},
        {"index": 5, "phase": "fallback", "config": "per_channel + keep float: /classifier/fc, /layer4/attn/MatMul_qk",
         "result": 0.8175, "seconds": 10.9, "passed": True, "error": None},
    ]  # fmt: skip
    ops = [
        ("/classifier/fc", "MatMul", 14.2, 0.0042),
        ("/layer4/attn/MatMul_qk", "MatMul", 11.7, 0.0094),
        ("/layer4/conv1", "Conv", 7.9, None),
        ("/layer3/conv2", "Conv", 6.1, None),
        ("/layer1/conv1 <b>odd&name</b>", "Conv", 4.4, None),
        ("/layer2/add", "Add", 2.0, None),
        ("/layer3/attn/MatMul_v", "MatMul", 9.3, -0.0008),
        ("/stem/conv", "Conv", 1.2, None),
    ]
    sensitivity = [{"op": op, "op_type": t, "own_sqnr_db": drop, "gain": gain} for op, t, drop, gain in ops]
    by_type = {"Conv": [23, 24], "MatMul": [10, 12], "Add": [8, 8], "Relu": [17, 17]}
    return {
        "model": "resnet-attn-tiny <v2>",
        "backend": "onnx_qdq",
        "isa": "AMD EPYC 9B14 (AVX-512 VNNI)",
        "criterion": "relative",
        "tolerable_loss": 0.01,
        "higher_is_better": True,
        "policy": "first",
        "baseline": baseline,
        "goal": goal,
        "goal_met": True,
        "best_trial": 5,
        "stopped_by": "goal met",
        "wall_seconds": 59.0,
        "conversion_seconds": 8.7,
        "seconds_per_trial": 9.83,
        "trials": trials,
        "sensitivity": sensitivity,
        "coverage": {
            "quantized": sum(q for q, _ in by_type.values()),
            "total": sum(t for _, t in by_type.values()),
            "heavy_quantized": 33,
            "heavy_total": 36,
            "by_type": by_type,
        },
        "float_ops": [
            {"op": "/classifier/fc", "op_type": "MatMul", "reason": "fallback: eval gain +0.0042 (SQNR drop 14.2 dB)"},
            {"op": "/layer4/attn/MatMul_qk", "op_type": "MatMul", "reason": "fallback: eval gain +0.0094"},
            {"op": "/layer2/conv_dw", "op_type": "Conv", "reason": "depthwise with 1 channel per group: <unsupported>"},
        ],
    }


def test_report_is_written_atomically_self_contained_and_escaped(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "report.html"
    written = write_html_report(make_summary(), out)
    assert written == out and out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # no leftover temporary file
    text = out.read_text(encoding="utf-8")

    assert "<script>alert" not in text and 'alert("x")' not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text  # in the trials table
    assert "resnet-attn-tiny &lt;v2&gt;" in text
    assert "&lt;unsupported&gt;" in text and "exit code -6" in text
    assert "<b>odd&name</b>" not in text

    assert '<script src="http' not in text
    assert re.search(r"<script[^>]*\bsrc=", text) is None  # nothing loaded from outside: renders offline
    assert text.count("Plotly.newPlot(") == 3
    assert len(text) > 3_000_000  # plotly.min.js inlined exactly once
    assert text.count("* plotly.js v") == 1

    for needle in (
        "goal met",
        "onnx_qdq",
        "AMD EPYC 9B14 (AVX-512 VNNI)",
        "relative, tolerable loss 1 %",
        "stopped by",
    ):
        assert needle in text
    assert "goal NOT met" not in text
    assert "1.13 times one full conversion" in text
    for op in ("/classifier/fc", "/layer2/conv_dw"):
        assert op in text


def test_goal_not_met_and_no_sensitivity(tmp_path: Path) -> None:
    summary = make_summary()
    summary.update(goal_met=False, best_trial=None, stopped_by="max_trials", sensitivity=[], float_ops=[])
    summary["trials"] = summary["trials"][:3]
    text = write_html_report(summary, str(tmp_path / "r.html")).read_text(encoding="utf-8")
    assert "goal NOT met" in text
    assert "no fallback phase ran" in text.lower()
    assert text.count("Plotly.newPlot(") == 2
    assert "no op is kept float" in text


def test_overwrites_an_existing_report(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    out.write_text("old", encoding="utf-8")
    write_html_report(make_summary(), out)
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda s: s.pop("trials"), "'trials'"),
        (lambda s: s.pop("goal"), "'goal'"),
        (lambda s: s["coverage"].pop("by_type"), "'by_type'"),
        (lambda s: s["trials"][2].pop("config"), "'config'"),
        (lambda s: s["sensitivity"][0].pop("own_sqnr_db"), "'own_sqnr_db'"),
        (lambda s: s["float_ops"][1].pop("reason"), "'reason'"),
    ],
)
def test_missing_key_raises_quantir_error(tmp_path: Path, mutate: Any, key: str) -> None:
    summary = copy.deepcopy(make_summary())
    mutate(summary)
    with pytest.raises(QuantirError, match=f"missing the key {key}"):
        write_html_report(summary, tmp_path / "r.html")
    assert not any(tmp_path.iterdir())


def test_bad_values_raise_quantir_error(tmp_path: Path) -> None:
    summary = make_summary()
    summary["trials"][0]["result"] = "0.7"
    with pytest.raises(QuantirError, match=r"\['trials'\]\[0\]\['result'\] must be a finite number"):
        write_html_report(summary, tmp_path / "r.html")
    summary = make_summary()
    summary["coverage"]["by_type"]["Conv"] = [25, 24]
    with pytest.raises(QuantirError, match=r"\['by_type'\]\['Conv'\] must be \[quantized_count, total_count\]"):
        write_html_report(summary, tmp_path / "r.html")
    with pytest.raises(QuantirError, match="must be a mapping"):
        write_html_report([], tmp_path / "r.html")  # type: ignore[arg-type]


def test_importing_quantir_does_not_import_plotly() -> None:
    code = "import sys, quantir, quantir.compiler, quantir.compiler.tuning.report; print('plotly' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium (or chromium-browser) is not on PATH, and CI is set: the rendering test must run")
        pytest.skip("chromium (or chromium-browser) is not on PATH: cannot check the report renders in a browser")
    return found


def _run_chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        chromium,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    out = write_html_report(make_summary(), tmp_path / "report.html")
    raw = out.read_text(encoding="utf-8")
    assert 'class="main-svg"' not in raw and 'class="xtick"' not in raw  # only plotly.js in a browser makes these

    dom = _run_chromium(chromium, tmp_path / "profile-dom", "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html_dom = dom.stdout
    starts = []
    for plot_id in PLOT_IDS:
        tag = re.search(rf'<div[^>]*\bid="{plot_id}"[^>]*>', html_dom)
        assert tag is not None, f"{plot_id} missing from the rendered DOM"
        assert "js-plotly-plot" in tag.group(0), f"plotly.js did not draw {plot_id}: {tag.group(0)}"
        starts.append(tag.start())
    ends = [*starts[1:], len(html_dom)]
    for plot_id, start, end in zip(PLOT_IDS, starts, ends, strict=True):
        chunk = html_dom[start:end]
        assert '<svg class="main-svg"' in chunk, f"{plot_id} has no plotly SVG"
        assert 'class="xtick"' in chunk and 'class="ytick"' in chunk, f"{plot_id} has no axis ticks"
    trials, sens, cov = (html_dom[s:e] for s, e in zip(starts, ends, strict=True))
    assert trials.count('class="point"') >= 6 and "float baseline" in trials and "goal 0.8" in trials
    assert sens.count('class="point"') >= 8 and "/classifier/fc (MatMul)" in sens
    assert cov.count('class="point"') >= 8 and "Relu" in cov
    assert html_dom.count('<svg class="main-svg"') >= 6  # plotly draws two layers of SVG per plot

    png = tmp_path / "report.png"
    shot = _run_chromium(
        chromium, tmp_path / "profile-png", f"--screenshot={png}", "--window-size=1400,2400", out.as_uri()
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert png.is_file() and png.stat().st_size > 20_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
