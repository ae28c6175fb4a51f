"""The calibration progress line: drawn on a terminal only, complete at the end, erased when done."""

from __future__ import annotations

import io

import pytest

from quantir.compiler.api import prepare
from quantir.compiler.calibration.progress import Progress
from quantir.compiler.config.quant_config import StaticQuantConfig
from quantir.tools.digits import bundled_model_path, load_digits_split


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_counts_and_erases_itself() -> None:
    out = _Terminal()
    bar = Progress(256, stream=out, interval=0.0)
    for _ in range(8):
        bar.update(32)
    frames = out.getvalue().split("\r")[1:]
    assert frames[0].startswith("calibrate  32/256 samples   12%")
    assert frames[-1].startswith("calibrate  256/256 samples  100%")
    bar.close()
    assert out.getvalue().endswith("\r") and out.getvalue().split("\r")[-2].strip() == ""


def test_progress_is_silent_off_a_terminal() -> None:
    out = io.StringIO()
    bar = Progress(10, stream=out)
    bar.update(10)
    bar.close()
    assert out.getvalue() == ""


@pytest.mark.parametrize(("progress", "drawn"), [(True, True), (False, False)])
def test_prepared_model_calibration_shows_progress_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, progress: bool, drawn: bool
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    x = load_digits_split().calib_x[:64]
    prepared = prepare(str(bundled_model_path()), StaticQuantConfig())
    prepared.calibrate(({"x": x[i : i + 16]} for i in range(0, 64, 16)), sampling_size=64, progress=progress)
    assert prepared.calibrator.samples == 64
    assert ("calibrate  64/64 samples  100%" in terminal.getvalue()) is drawn
