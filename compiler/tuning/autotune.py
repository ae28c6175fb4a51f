"""`autotune`: accuracy-driven tuning with INC 3.x's semantics (trial order, relative-loss stop rule, re-quantize
the best), extended with a timeout, absolute or lower-is-better criteria, a best-within-budget policy and, when no
config meets the goal, a sensitivity-ranked op-by-op fallback. Calibration runs once; every trial converts from
its statistics (SmoothQuant's alpha included: the smoothed ranges follow from per-channel ranges collected once)."""

from __future__ import annotations

import copy
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from quantir.backends.contract import OpDecision
from quantir.backends.registry import DEFAULT_BACKEND, get_backend
from quantir.compiler.config.dynamic_config import DynamicQuantConfig
from quantir.compiler.config.tuning_config import TuningConfig
from quantir.compiler.pass_manager import PassContext
from quantir.compiler.quantized_model import QuantizedModel
from quantir.compiler.tuning.objective import Objective, as_metric
from quantir.compiler.tuning.result import TuningResult
from quantir.compiler.tuning.sensitivity import rank_ops, rank_weight_ops
from quantir.compiler.tuning.space import describe, is_calibrated, trial_configs, with_fallback
from quantir.compiler.tuning.trials import Job, Phase, TrialRecord, TrialState, make_executor, run_trials
from quantir.ir import ConfigError, QuantirError
from quantir.ir.clone import clone_graph
from quantir.ir.traits import UnitKind

__all__ = ["autotune"]


class TuningWarning(UserWarning):
    """Tuning stopped early (an eval_fn error) or did not meet its goal; the best model found is returned."""


def _float_model(model: Any, prepared: Any) -> Any:
    """What the baseline evaluates: a torch module itself (INC evaluates a copy of the fp32 model), else the float
    graph run by the target backend's runtime (the same call interface as every trial's model)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        return copy.deepcopy(model)
    return QuantizedModel(clone_graph(prepared.graph)[0], prepared.backend, prepared.config, PassContext())


def _calibrate(prepared: Any, configs: list[Any], calib_data: Any, run_fn: Callable[..., Any] | None,
               run_args: tuple[Any, ...]) -> None:  # fmt: skip
    from quantir.compiler.api import _data_free

    if run_fn is not None:
        run_fn(prepared, *run_args)
    elif calib_data is not None:
        size = max(getattr(c, "calibration_sampling_size", 100) for c in configs)
        prepared.calibrate(calib_data, sampling_size=size)
    elif not all(_data_free(c) for c in configs):
        raise QuantirError("autotune() needs calib_data or run_fn: some config of the set calibrates (static "
                           "quantization, GPTQ, AWQ)")  # fmt: skip


class _Tuner:
    def __init__(self, cfg: TuningConfig, state: TrialState, result: TuningResult, t0: float,
                 on_trial: Callable[[TrialRecord], None] | None) -> None:  # fmt: skip
        self.cfg = cfg
        self.state = state
        self.result = result
        self.t0 = t0
        self.deadline = t0 + cfg.timeout if cfg.timeout > 0 else None
        self.on_trial = on_trial
        self.executor = make_executor(cfg.executor, state, cfg.workers, cfg.ray_address)  # type: ignore[arg-type]
        self.stopped: str | None = None

    @property
    def budget(self) -> int:
        return self.cfg.max_trials - len(self.result.trials)

    def run(self, phase: Phase, items: list[tuple[Any, tuple[str, ...]]], stop_on_pass: bool,
            base: str | None = None) -> list[TrialRecord]:  # fmt: skip
        """Run the trials of `items` ((config, ops kept float on top of the config `base` describes))."""
        items = items[: max(0, self.budget)]
        start = len(self.result.trials)
        jobs = [Job(start + i + 1, phase, c, f"{base} + float {', '.join(ops)}" if ops else describe(c), ops)
                for i, (c, ops) in enumerate(items)]  # fmt: skip
        records, reason = run_trials(jobs, self.executor, passes=self.result.objective.meets,
                                     stop_on_pass=stop_on_pass, t0=self.t0, deadline=self.deadline,
                                     on_record=self.on_trial)  # fmt: skip
        self.result.trials.extend(records)
        for r in records:
            self._consider(r)
        if reason in ("timeout", "eval_fn error"):
            self.stopped = reason
            if reason == "eval_fn error":
                self.result.error = records[-1].error
        elif reason == "goal met":
            self.stopped = reason
        elif len(records) < len(jobs) or self.budget <= 0:
            self.stopped = "max_trials"
        return records

    def _consider(self, r: TrialRecord) -> None:
        """Keep the best trial: passing beats failing; `first` keeps the first passing one, `best` the best
        result (ties: the earlier); among failing ones the best result."""
        best, obj = self.result.best, self.result.objective
        if r.result is None:
            return
        if (
            best is None
            or best.result is None
            or (r.passed and not best.passed)
            or (
                r.passed == best.passed
                and obj.better(r.result, best.result)
                and not (r.passed and self.cfg.policy == "first")
            )
        ):
            self.result.best = r

    def close(self) -> None:
        self.executor.close()


def _fallback_phase(tuner: _Tuner, base: TrialRecord, prepared: Any) -> None:
    """Sensitivity-ranked fallback from the best trial's config: per-op SQNR loss, eval_fn on the worst
    candidates alone, then cumulative fallback in that order until the goal is met."""
    from quantir.compiler.api import convert

    result, cfg = tuner.result, tuner.cfg
    model = convert(prepared, base.config)
    caps = get_backend(prepared.backend).capabilities
    quantized = [d.name for d in model.decisions() if d.quantized]
    units = [
        op
        for op, d in zip(quantized, (model.ctx.decisions[o] for o in quantized), strict=True)
        if not op.startswith("<") and caps.kind(d.op_type) is UnitKind.COMPUTE
    ]  # a Relu follows its producer
    if not is_calibrated(base.config):  # weight-only: each op's error is its weights'
        ranking = rank_weight_ops(model.ir, prepared.graph, units)
    elif prepared.kept_batches:
        ranking = rank_ops(model.ir, units, quantized, prepared.kept_batches)
    else:
        result.fallback_note = "no calibration batch was kept for the per-op SQNR (calibrate with calib_data)"
        return
    result.sensitivity = ranking
    if not ranking:
        result.fallback_note = "no quantized op to keep float"
        return
    candidates = [s.op for s in ranking[: cfg.sensitivity_candidates]]
    singles = tuner.run("sensitivity", [(with_fallback(base.config, [op]), (op,)) for op in candidates],
                        stop_on_pass=True, base=base.description)  # fmt: skip
    assert base.result is not None
    for r in singles:
        if r.result is not None and r.fallback:
            result.gains[r.fallback[0]] = result.objective.gain(r.result, base.result)
    if tuner.stopped is not None:
        _record_gains(result, base)
        return
    measured = [op for op in candidates if op in result.gains]
    order = sorted(measured, key=lambda op: -result.gains[op])  # stable: SQNR order breaks ties
    order += [s.op for s in ranking if s.op not in order]
    limit = min(len(order), cfg.max_fallback_ops or len(order))
    prefixes = [tuple(order[:k]) for k in range(2, limit + 1)]
    tuner.run(
        "fallback",
        [(with_fallback(base.config, list(p)), p) for p in prefixes],
        stop_on_pass=True,
        base=base.description,
    )
    if tuner.stopped is None and not result.goal_met:
        result.fallback_note = (f"the goal was not met with up to {limit} op(s) kept float"
                                + (" (max_fallback_ops)" if limit < len(order) else ""))  # fmt: skip
    _record_gains(result, base)


def _record_gains(result: TuningResult, base: TrialRecord) -> None:
    """Each op the best trial keeps float by tuning, with the gain it brought when added (in trial order)."""
    best = result.best
    if best is None or not best.fallback:
        return
    by_set = {t.fallback: t.result for t in result.trials if t.result is not None}
    before = base.result
    for k, op in enumerate(best.fallback, start=1):
        after = by_set.get(best.fallback[:k])
        gain = result.objective.gain(after, before) if after is not None and before is not None else 0.0
        result.fallback_gains[op] = gain
        before = after if after is not None else before


def _explain_fallback(model: QuantizedModel, gains: dict[str, float]) -> None:
    """Every op tuning kept float carries the reason and the gain."""
    for op, gain in gains.items():
        d = model.ctx.decisions.get(op)
        if d is not None:
            model.ctx.decisions[op] = OpDecision(d.name, d.op_type, d.module, False,
                                                 f"fallback by tuning: {gain:+.4g} accuracy")  # fmt: skip
    model._legal.clear()


def autotune(
    model: Any,
    tune_config: TuningConfig,
    eval_fn: Callable[..., Any],
    calib_data: Iterable[Any] | str | os.PathLike[str] | None = None,
    *,
    eval_args: tuple[Any, ...] = (),
    run_fn: Callable[..., Any] | None = None,
    run_args: tuple[Any, ...] = (),
    example_inputs: Any = None,
    dynamic_shapes: Any = None,
    backend: str = DEFAULT_BACKEND,
    on_trial: Callable[[TrialRecord], None] | None = None,
) -> QuantizedModel:
    """Tune `model` over `tune_config.config_set` until `eval_fn(quantized_model, *eval_args)` meets the goal
    relative to `eval_fn` on the float model. Calibrates once (on `calib_data`, or by `run_fn(prepared, *run_args)`).

    Always returns a model (never None): the best one found, with `model.tuning` (a TuningResult) saying whether
    the goal was met, every trial and why tuning stopped. An eval_fn that raises or returns a non-number stops
    tuning at that trial (named in `tuning.error`); the best model so far is kept. `on_trial` sees each trial
    record as it completes (the CLI's live table)."""
    from quantir.compiler.api import convert, prepare

    t0 = time.perf_counter()
    if not isinstance(tune_config, TuningConfig):
        raise ConfigError(f"autotune: tune_config must be a TuningConfig, got {type(tune_config).__name__}")
    if not callable(eval_fn):
        raise ConfigError(f"autotune: eval_fn must be callable (model -> number), got {type(eval_fn).__name__}")
    configs = trial_configs(tune_config.config_set)
    prepared = prepare(model, configs[0], backend=backend, example_inputs=example_inputs,
                       dynamic_shapes=dynamic_shapes)  # fmt: skip
    prepared.tuning_configs = [*configs[1:]]
    prepared.keep_samples = tune_config.sensitivity_samples if tune_config.fallback else 0
    t1 = time.perf_counter()
    _calibrate(prepared, configs, calib_data, run_fn, run_args)
    t2 = time.perf_counter()
    try:
        baseline = as_metric(eval_fn(_float_model(model, prepared), *eval_args), "eval_fn on the float model")
    except QuantirError:
        raise
    except Exception as e:
        raise QuantirError(f"eval_fn on the float model (the baseline) raised {type(e).__name__}: {e}") from e
    t3 = time.perf_counter()
    objective = Objective(baseline, tune_config.tolerable_loss, tune_config.criterion,  # type: ignore[arg-type]
                          tune_config.higher_is_better)  # fmt: skip
    result = TuningResult(objective, tune_config.policy, prepare_seconds=t1 - t0, calibration_seconds=t2 - t1,
                          baseline_seconds=t3 - t2)  # fmt: skip
    state = TrialState(prepared, eval_fn, tuple(eval_args))
    tuner = _Tuner(tune_config, state, result, t0, on_trial)
    try:
        tuner.run("config", [(c, ()) for c in configs], stop_on_pass=tune_config.policy == "first")
        if tuner.stopped is None:
            tuner.stopped = "config set exhausted"
        best = result.best
        if not result.goal_met and tuner.stopped not in ("eval_fn error", "timeout") and tuner.budget > 0:
            if not tune_config.fallback:
                result.fallback_note = "fallback=False"
            elif best is None:
                result.fallback_note = "no config converted"
            elif isinstance(best.config, DynamicQuantConfig):
                result.fallback_note = "dynamic quantization has no per-op sensitivity ranking yet"
            else:
                tuner.stopped = None
                _fallback_phase(tuner, best, prepared)
                tuner.stopped = tuner.stopped or "fallback exhausted"
        result.stopped_by = tuner.stopped or "config set exhausted"
        last = getattr(tuner.executor, "last", None)
    finally:
        tuner.close()
    best = result.best
    if best is None:
        raise QuantirError(f"autotune: no trial produced a model ({result.stopped_by}); "
                           + (result.error or "; ".join(t.error or "" for t in result.trials[:3])))  # fmt: skip
    # INC re-quantizes the best config unless it was the last trial (whose model the sequential run still holds)
    quantized = last[1] if last is not None and last[0] == best.index and last[1] is not None else None
    if quantized is None:
        quantized = convert(prepared, best.config)
    _explain_fallback(quantized, result.fallback_gains)
    result.wall_seconds = time.perf_counter() - t0
    quantized.tuning = result
    quantized.ctx.recipes.append(f"autotune: {result.outcome()}")  # the artifact's manifest says how it was chosen
    if not result.goal_met or result.error:
        warnings.warn(f"autotune: {result.outcome()}", TuningWarning, stacklevel=2)
    return quantized
