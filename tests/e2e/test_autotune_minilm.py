"""autotune on the real all-MiniLM-L6-v2 with the held-out embedding cosine as eval_fn (issue 15): a 0.5 % loss
relative to cos 1.0 is met by tuning SmoothQuant's alpha over INC's list (no hand-picked alpha), with calibration
run once for every trial."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from quantir.compiler import StaticQuantConfig, TuningConfig, autotune
from quantir.compiler.tuning import TuningWarning
from quantir.tools.minilm import CALIBRATION_COUNT, batches, embed, export_minilm, load_sentences, mean_cosine


@pytest.mark.slow
def test_minilm_half_a_percent_cosine_loss_is_met_by_tuning_alpha() -> None:
    model = str(export_minilm())
    sentences = load_sentences()
    calib = batches(sentences[:CALIBRATION_COUNT], 16)
    held = sentences[CALIBRATION_COUNT : CALIBRATION_COUNT + 64]
    reference, feeds = embed(model, held), batches(held, 16)

    def cosine(m: object) -> float:
        return mean_cosine(reference, np.concatenate([np.asarray(m(f)) for f in feeds]))  # type: ignore[operator]

    alphas = [round(0.1 * k, 1) for k in range(1, 10)]  # INC's SmoothQuant tuning list, 0.1 ... 0.9
    space = StaticQuantConfig(smooth_quant=True, smooth_quant_alpha=alphas)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TuningWarning)  # the goal must be met
        q = autotune(model, TuningConfig([space], tolerable_loss=0.005), cosine, calib)
    t = q.tuning
    assert t.baseline == pytest.approx(1.0, abs=1e-6) and t.goal == pytest.approx(0.995, abs=1e-6)
    assert t.goal_met and t.stopped_by == "goal met" and all(r.phase == "config" for r in t.trials)
    assert all(not r.passed for r in t.trials[:-1]) and t.best is t.trials[-1]  # INC's stop rule
    assert q.config.smooth_quant_alpha == alphas[len(t.trials) - 1] and cosine(q) >= 0.995
    assert t.calibration_seconds > 0 and all(r.convert_seconds > 0 for r in t.trials)
    print(f"\nMiniLM autotune: {t.outcome()}\n{t.table()}")
