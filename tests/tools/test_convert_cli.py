"""`quantir convert` on the bundled digits CNN with real calibration data: the printed summary, coverage and
agreement, a YAML config with a fallback, and one-paragraph errors (exit 2, no traceback, no output folder)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantir.tools.cli import main
from quantir.tools.digits import bundled_model_path, load_digits_split

MODEL = str(bundled_model_path())
DEFAULT_REASON = "global config -> weights int8 sym per_channel minmax, activations uint8 asym per_tensor mse"
RELU_QUANTIZER = "; the Relu/Clip after it carries the output quantizer"


@pytest.fixture(scope="module")
def calib_x() -> np.ndarray:
    return load_digits_split().calib_x


@pytest.fixture
def npz(tmp_path: Path, calib_x: np.ndarray) -> Path:
    path = tmp_path / "calib.npz"
    np.savez(path, x=calib_x)
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["convert", MODEL, *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _summary(out: str) -> list[tuple[str, int, str]]:
    """The per-reason rows of the printed summary: (int8|float, count, reason)."""
    rows = re.findall(r"^  (int8 |float)  +(\d+)  (.+)$", out, flags=re.MULTILINE)
    return [(kind.strip(), int(n), reason) for kind, n, reason in rows]


def test_convert_prints_summary_coverage_and_agreement(
    tmp_path: Path, npz: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "int8"
    rc, out, err = _run(capsys, "--calib", str(npz), "-o", str(out_dir))
    print(out)
    assert rc == 0, err
    assert "Traceback" not in err
    lines = out.splitlines()
    assert re.fullmatch(rf"converted {re.escape(MODEL)} in \d+\.\d\d s \(100 calibration samples\)", lines[0])
    assert lines[1] == "recipe: no SmoothQuant: smooth_quant=None: no transformer-style block"
    assert lines[2] == "ops: 9 quantized, 4 float"
    rows = _summary(out)
    assert sum(n for kind, n, _ in rows if kind == "int8") == 9
    assert sum(n for kind, n, _ in rows if kind == "float") == 4
    assert all(reason.strip() for _, _, reason in rows)  # every group, float ones included, has a reason
    assert ("int8", 3, DEFAULT_REASON + RELU_QUANTIZER) in rows  # conv1, conv2, fc1: one quantizer after the Relu
    assert ("float", 1, "Shape has no integer kernel in ONNX Runtime") in rows
    assert f"onnx_qdq: {out_dir.absolute()}" in lines
    assert "  int8 kernel coverage: 100% (4/4 Conv/MatMul/Gemm)" in lines
    assert "  agreement with the float model on the calibration data:" in lines
    agreement = re.search(
        r"^    logits: max \|diff\| ([\d.e+-]+), relative L2 ([\d.]+)%, mean cosine ([\d.]+), "
        r"argmax agreement ([\d.]+)%$",
        out,
        flags=re.MULTILINE,
    )
    assert agreement, out
    max_diff, rel_l2, cosine, argmax = map(float, agreement.groups())
    assert 0 < max_diff < 1 and 0 < rel_l2 < 3 and cosine > 0.999 and argmax >= 99.0
    assert sorted(os.listdir(tmp_path)) == ["calib.npz", "int8"]
    assert sorted(os.listdir(out_dir)) == ["model.onnx", "quantir.json"]
    manifest = json.loads((out_dir / "quantir.json").read_text())
    assert manifest["calibration"]["samples"] == 100
    assert len(manifest["decisions"]) == 13


def test_sampling_size_option(tmp_path: Path, npz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "--calib", str(npz), "--sampling-size", "256", "-o", str(tmp_path / "a"), "--to", "all")
    assert rc == 0, err
    assert "(256 calibration samples)" in out.splitlines()[0]
    for target in ("onnx_qdq", "openvino"):  # --to all writes one artifact per backend
        assert json.loads((tmp_path / "a" / target / "quantir.json").read_text())["calibration"]["samples"] == 256


def test_print_ir_after_all_covers_prepare_and_convert(tmp_path: Path, npz: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    rc, _, err = _run(capsys, "--calib", str(npz), "-o", str(tmp_path / "a"), "--print-ir-after-all")
    assert rc == 0, err
    printed = re.findall(r"^// -----// IR after (\S+)", err, flags=re.MULTILINE)
    assert printed == ["fold-constants", "canonicalize", "dce", "annotate", "compute-qparams"], printed
    assert "scale" in err.split("IR after compute-qparams")[1]  # the calibrated types appear in the text


def test_config_file_fallback_shows_fc1_float(tmp_path: Path, npz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "fc1_float.yaml"
    cfg.write_text("local:\n  fc1:\n    w_dtype: fp32\n    act_dtype: fp32\n")
    out_dir = tmp_path / "out"
    rc, out, err = _run(capsys, "--calib", str(npz), "--config", str(cfg), "-o", str(out_dir))
    print(out)
    assert rc == 0, err
    assert "ops: 7 quantized, 6 float" in out.splitlines()
    rows = _summary(out)
    assert ("float", 1, "set_local('fc1') -> fp32 (fallback)") in rows
    assert ("int8", 2, DEFAULT_REASON + RELU_QUANTIZER) in rows  # conv1 and conv2 (fc2's reason: float output)
    assert "  int8 kernel coverage: 100% (3/3 Conv/MatMul/Gemm)" in out.splitlines()
    decisions = json.loads((out_dir / "quantir.json").read_text())["decisions"]
    by_module = {d["module"]: d["quantized"] for d in decisions if d["op_type"] in ("Conv", "Gemm")}
    assert by_module == {"conv1": True, "conv2": True, "fc1": False, "fc2": True}


def _write_bad_inputs(tmp: Path, x: np.ndarray) -> None:
    nan = x[:96].copy()
    nan[40, 0, 2, 2] = np.nan
    np.savez(tmp / "nan.npz", x=nan)
    np.savez(tmp / "named.npz", image=x[:64], label=np.zeros(64))
    np.savez(tmp / "shape.npz", x=np.zeros((64, 1, 9, 9), np.float32))
    np.savez(tmp / "empty.npz", x=x[:0])
    (tmp / "convv.yaml").write_text("local:\n  Convv:\n    w_dtype: fp32\n    act_dtype: fp32\n")
    (tmp / "avg.yaml").write_text("act_algo: avg\n")
    (tmp / "file").write_text("a file, not a folder")
    np.savez(tmp / "good.npz", x=x[:64])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--calib", "{tmp}/nan.npz"],
            "calibration batch 1, input 'x' contains 1 NaN/Inf values; calibration data must be finite",
        ),
        (["--calib", "{tmp}/missing.npz"], "cannot read calibration data {tmp}/missing.npz: [Errno 2] No such file"),
        (["--calib", "{tmp}/named.npz"], "lacks arrays for inputs ['x']; it has ['image', 'label']"),
        (["--calib", "{tmp}/shape.npz"], "input 'x' has shape [32, 1, 9, 9]; the model expects [batch, 1, 8, 8]"),
        (["--calib", "{tmp}/empty.npz"], "the calibration data is empty"),
        (["--calib", "{tmp}/good.npz", "--config", "{tmp}/convv.yaml"], "set_local key 'Convv' is not a known op type"),
        (
            ["--calib", "{tmp}/good.npz", "--config", "{tmp}/avg.yaml"],
            "StaticQuantConfig.act_algo='avg': expected one of minmax, kl, percentile, mse",
        ),
        (
            ["--calib", "{tmp}/good.npz", "--to", "tensorrt"],
            "--to tensorrt: unknown target; expected onnx-qdq, openvino, pt2e, ipex, gaudi-fp8 or all",
        ),
    ],
    ids=["nan", "missing-file", "wrong-name", "wrong-shape", "empty", "unknown-op-type", "bad-config-value", "bad-to"],
)
def test_bad_input_exits_2_with_one_paragraph_and_no_output(
    tmp_path: Path, calib_x: np.ndarray, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    _write_bad_inputs(tmp_path, calib_x)
    before = sorted(os.listdir(tmp_path))
    out_dir = tmp_path / "out"
    rc, out, err = _run(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv], "-o", str(out_dir))
    assert rc == 2, (out, err)
    _assert_one_paragraph(err)
    assert _squash(expected.replace("{tmp}", str(tmp_path))) in _squash(err)
    assert out == ""
    assert not out_dir.exists()
    assert sorted(os.listdir(tmp_path)) == before  # no artifact, no temporary folder


@pytest.mark.parametrize("where", ["{tmp}/file/out", "/proc/quantir-cli-test"], ids=["parent-is-a-file", "proc"])
def test_unwritable_output_exits_2(tmp_path: Path, npz: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    (tmp_path / "file").write_text("a file, not a folder")
    target = where.replace("{tmp}", str(tmp_path))
    rc, out, err = _run(capsys, "--calib", str(npz), "-o", target)
    assert rc == 2, (out, err)
    _assert_one_paragraph(err)
    assert _squash(f"cannot write the artifact '{target}'") in _squash(err)
    assert not os.path.exists(target)
    assert sorted(os.listdir(tmp_path)) == ["calib.npz", "file"]
    assert (tmp_path / "file").read_text() == "a file, not a folder"


def test_missing_model_exits_2(tmp_path: Path, npz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["convert", str(tmp_path / "nope.onnx"), "--calib", str(npz), "-o", str(tmp_path / "out")])
    _, err = capsys.readouterr()
    assert rc == 2
    _assert_one_paragraph(err)
    assert _squash("nope.onnx: no such file") in _squash(err)
    assert sorted(os.listdir(tmp_path)) == ["calib.npz"]


def _squash(text: str) -> str:
    """Without whitespace: the message is wrapped at 100 columns (and long paths are broken at their hyphens)."""
    return re.sub(r"\s+", "", text)


def _assert_one_paragraph(err: str) -> None:
    assert err.startswith("quantir: error: "), err
    assert "Traceback" not in err and 'File "' not in err
    lines = err.rstrip("\n").splitlines()
    assert all(line.startswith("  ") and line.strip() for line in lines[1:]), err  # continuation lines only


def test_console_script_reports_nan_without_traceback(tmp_path: Path, calib_x: np.ndarray) -> None:
    nan = calib_x[:64].copy()
    nan[0, 0, 0, 0] = np.inf
    np.savez(tmp_path / "nan.npz", x=nan)
    exe = shutil.which("quantir") or str(Path(sys.executable).parent / "quantir")
    cmd = [exe, "convert", MODEL, "--calib", str(tmp_path / "nan.npz"), "-o", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    _assert_one_paragraph(proc.stderr)
    assert _squash("calibration batch 0, input 'x' contains 1 NaN/Inf values") in _squash(proc.stderr)
    assert sorted(os.listdir(tmp_path)) == ["nan.npz"]


def test_converting_a_qir_model_leaves_no_temporary_files(
    tmp_path: Path, npz: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    qir = tmp_path / "digits.qir"
    assert main(["ir", "dump", MODEL, "-o", str(qir)]) == 0
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))  # where this process puts its temporary files
    rc = main(["convert", str(qir), "--calib", str(npz), "-o", str(tmp_path / "out")])
    capsys.readouterr()
    assert rc == 0
    assert (tmp_path / "out" / "model.onnx").exists()
    assert os.listdir(scratch) == []


def test_convert_to_gaudi_fp8_with_an_inc_fp8_json(
    tmp_path: Path, npz: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`quantir convert ... --to gaudi-fp8 --config fp8.json`: INC's FP8 JSON form (its `device_for_scales` spelling),
    the checkpoint written and emulated, with an explicit note that no FP8 kernel ran."""
    cfg = tmp_path / "fp8.json"
    cfg.write_text(json.dumps({"fp8_config": "E4M3", "scale_method": "maxabs_pow2", "device_for_scales": "GAUDI3"}))
    rc, out, err = _run(capsys, "--to", "gaudi-fp8", "--config", str(cfg), "--calib", str(npz), "-o",
                        str(tmp_path / "ckpt"))  # fmt: skip
    assert rc == 0, err
    assert len(re.findall(r"^  fp8  +1  (?:Conv2d|Linear) .*scale_method maxabs_pow2$", out, re.MULTILINE)) == 4, out
    assert "FP8 module coverage: 100% (4/4 Conv/MatMul/Gemm)" in out and "no FP8 kernel runs" in out
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())["quantization_config"]
    assert config["scale_method"] == "maxabs_pow2" and config["device_for_scales"] == "GAUDI3"
    assert config["mode"] == "LOAD"
    rc, _, err = _run(capsys, "--to", "gaudi-fp8", "--calib", str(npz), "-o", str(tmp_path / "int8"))
    assert rc == 2 and "not converted with an FP8Config" in err and "convert with FP8Config()" in err
    assert not (tmp_path / "int8").exists()
