"""`quantir tune` end to end on the bundled digits CNN: a goal that needs fallback, through an eval script given
as SCRIPT.py:FUNC; the best artifact and the HTML report are written; bad eval scripts are clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from quantir.compiler.isa import detect_cpu
from quantir.tools.cli import main
from quantir.tools.digits import bundled_model_path, load_digits_split

MODEL = str(bundled_model_path())

EVAL_SCRIPT = """
import numpy as np
from quantir.tools.digits import bundled_model_path, load_digits_split

D = load_digits_split()
_calls = []


def cosine(model):
    import onnxruntime as ort
    s = ort.InferenceSession(str(bundled_model_path()), providers=["CPUExecutionProvider"])
    ref = s.run(None, {"x": D.test_x})[0].astype(np.float64)
    out = np.asarray(model(D.test_x), dtype=np.float64)
    return float(np.mean((out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)))


def accuracy(model):
    return float((np.asarray(model(D.test_x)).argmax(1) == D.test_y).mean())


def fails_on_trial_2(model):
    _calls.append(1)
    if len(_calls) == 3:
        raise KeyError("split")
    return 1.0 if len(_calls) == 1 else 0.5
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tune")
    (root / "evals.py").write_text(EVAL_SCRIPT)
    np.savez(root / "calib.npz", x=load_digits_split().calib_x)
    return root


@pytest.mark.xfail(
    detect_cpu().int8_saturates,
    reason=(
        "on x86 CPUs without VNNI/AMX (7-bit weights) the per-op SQNR ranks conv2 above conv1, so cumulative fallback "
        "keeps conv1+conv2+fc2 where conv1+fc2 suffice (measured on an AVX2 AMD EPYC): the greedy order is not optimal"
    ),
    strict=False,
)
def test_tune_meets_a_fallback_goal_and_writes_the_artifact_and_report(
    work: Path, capsys: pytest.CaptureFixture[str], digits_pair_goal: tuple[float, tuple[str, ...]]
) -> None:
    goal, pair = digits_pair_goal  # the pair is conv1 + fc2 on both CPUs measured (tests/conftest.py)
    out = work / "out"
    rc = main(["tune", MODEL, "--calib", str(work / "calib.npz"), "--eval", f"{work / 'evals.py'}:cosine",
               "--config", str(_config(work)), "--tolerable-loss", f"{goal:.6g}", "-o", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "trial   1 [config]" in text and "[fallback]" in text and "goal met" in text
    assert f"kept float by tuning: {', '.join(pair)}" in text and ("AVX" in text or "dotprod" in text)
    manifest = json.loads((out / "onnx_qdq" / "quantir.json").read_text())
    reasons = {d["name"]: d["reason"] for d in manifest["decisions"]}
    assert reasons["node_conv2d"].startswith("fallback by tuning: +") and reasons["node_linear_1"].startswith(
        "fallback by tuning: +"
    )
    session = ort.InferenceSession(str(out / "onnx_qdq" / manifest["model"]), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": load_digits_split().test_x[:4]})[0].shape == (4, 10)
    html = (out / "tuning_report.html").read_text()
    assert "node_linear_1" in html and "fallback by tuning" in html


def _config(work: Path) -> Path:
    path = work / "space.yaml"
    path.write_text("act_algo: mse\n")
    return path


def test_tune_errors_are_clear(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["tune", MODEL, "--calib", str(work / "calib.npz"), "-o", str(work / "bad")]
    assert main([*base, "--eval", "missing.py:f"]) == 2
    assert "no such file missing.py" in capsys.readouterr().err
    assert main([*base, "--eval", f"{work / 'evals.py'}:nope"]) == 2
    assert "has no function 'nope'; it defines: accuracy, cosine, fails_on_trial_2" in " ".join(
        capsys.readouterr().err.split()
    )
    assert main([*base, "--eval", str(work / "evals.py")]) == 2
    assert "expected SCRIPT.py:FUNCTION" in capsys.readouterr().err
    rc = main([*base, "--eval", f"{work / 'evals.py'}:fails_on_trial_2", "--no-fallback"])
    text = capsys.readouterr().out
    assert rc == 1 and "eval_fn error" in text and (work / "bad" / "onnx_qdq").is_dir()  # the best so far is saved
