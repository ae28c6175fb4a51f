"""Running trials: one trial converts the prepared model with a config (reusing its calibration statistics) and
calls `eval_fn` on the result. Trials run in order, inline, in a local process pool or as Ray tasks; results are
taken strictly in trial order, so a parallel run stops at the same trial and returns the same result as a
sequential one. No trial starts after the deadline; trials already running finish."""

from __future__ import annotations

import concurrent.futures
import inspect
import multiprocessing
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from quantir.compiler.tuning.objective import EvalResultError, as_metric
from quantir.ir import QuantirError

__all__ = ["Executor", "Job", "Outcome", "TrialRecord", "TrialState", "make_executor", "run_trials"]

Phase = Literal["config", "sensitivity", "fallback"]
ExecutorName = Literal["sequential", "process", "ray"]


@dataclass(frozen=True, slots=True)
class Job:
    index: int
    """1-based trial number across the whole run."""
    phase: Phase
    config: Any
    description: str
    fallback: tuple[str, ...] = ()
    """The ops this trial keeps float on top of its base config (fallback phases)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    result: float | None
    error: str | None
    """Why the trial has no result: a conversion error (the next trial runs) or an eval_fn error (tuning stops)."""
    eval_failed: bool
    convert_seconds: float
    eval_seconds: float


@dataclass(frozen=True, slots=True)
class TrialRecord:
    index: int
    phase: Phase
    description: str
    config: Any
    fallback: tuple[str, ...]
    result: float | None
    passed: bool
    error: str | None
    eval_failed: bool
    started: float
    """Seconds after tuning started when the trial was submitted."""
    convert_seconds: float
    eval_seconds: float

    @property
    def seconds(self) -> float:
        return self.convert_seconds + self.eval_seconds

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "phase": self.phase, "config": self.description, "fallback": list(self.fallback),
                "result": self.result, "seconds": round(self.seconds, 4), "convert_seconds": self.convert_seconds,
                "eval_seconds": self.eval_seconds, "started": self.started, "passed": self.passed,
                "error": self.error}  # fmt: skip


@dataclass(slots=True)
class TrialState:
    """What every trial needs, shipped once to each worker: the prepared model (float graph and calibration
    statistics, no runtime session) and the user's evaluation."""

    prepared: Any
    eval_fn: Callable[..., Any]
    eval_args: tuple[Any, ...] = ()


def evaluate(state: TrialState, job: Job) -> tuple[Outcome, Any]:
    """Convert with the job's config and evaluate; the quantized model is returned too (None on failure)."""
    from quantir.compiler.api import convert  # the API imports tuning: bind late

    t0 = time.perf_counter()
    try:
        model = convert(state.prepared, job.config)
    except (QuantirError, NotImplementedError) as e:
        return Outcome(None, f"conversion failed: {e}", False, time.perf_counter() - t0, 0.0), None
    t1 = time.perf_counter()
    where = f"eval_fn on trial {job.index} ({job.description})"
    try:
        value = state.eval_fn(model, *state.eval_args)
    except Exception as e:
        tail = traceback.format_exception_only(type(e), e)[-1].strip()
        return Outcome(None, f"{where} raised {tail}", True, t1 - t0, time.perf_counter() - t1), None
    try:
        result = as_metric(value, where)
    except EvalResultError as e:
        return Outcome(None, str(e), True, t1 - t0, time.perf_counter() - t1), None
    return Outcome(result, None, False, t1 - t0, time.perf_counter() - t1), model


class Executor(Protocol):
    workers: int

    def submit(self, job: Job) -> concurrent.futures.Future[Outcome]: ...

    def close(self) -> None: ...


class _Inline:
    """Trials in this process, one at a time; keeps the last trial's model (re-used when it is the best)."""

    workers = 1

    def __init__(self, state: TrialState) -> None:
        self.state = state
        self.last: tuple[int, Any] | None = None

    def submit(self, job: Job) -> concurrent.futures.Future[Outcome]:
        future: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
        outcome, model = evaluate(self.state, job)
        self.last = (job.index, model)
        future.set_result(outcome)
        return future

    def close(self) -> None:
        self.last = None


_WORKER_STATE: TrialState | None = None


def _init_worker(payload: bytes) -> None:
    import cloudpickle  # type: ignore[import-untyped]  # no stubs

    global _WORKER_STATE
    _WORKER_STATE = cloudpickle.loads(payload)


def _pool_trial(payload: bytes) -> Outcome:
    import cloudpickle

    assert _WORKER_STATE is not None, "worker not initialized"
    return evaluate(_WORKER_STATE, cloudpickle.loads(payload))[0]


def _by_value(fn: object) -> None:
    """Ship the module of a user's eval_fn by value when workers could not import it (a test file, a script loaded
    by path): anything outside an installed package."""
    import cloudpickle

    module = inspect.getmodule(fn)
    path = getattr(module, "__file__", None) or ""
    if module is not None and module.__name__ != "__main__" and path and "-packages" not in path:
        cloudpickle.register_pickle_by_value(module)


def _dumps(obj: object) -> bytes:
    import cloudpickle

    if isinstance(obj, TrialState):
        _by_value(obj.eval_fn)
    try:
        data: bytes = cloudpickle.dumps(obj)
    except Exception as e:
        raise QuantirError(f"parallel trials need eval_fn and its arguments to be picklable by cloudpickle: {e}; "
                           "use executor='sequential', or define eval_fn at module level") from e  # fmt: skip
    return data


class _Pool:
    """A local pool of fresh (spawned) worker processes; the state is sent once to each."""

    def __init__(self, state: TrialState, workers: int) -> None:
        self.workers = workers
        ctx = multiprocessing.get_context("spawn")  # never fork a process that holds runtime thread pools
        self.pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                                           initargs=(_dumps(state),))  # fmt: skip

    def submit(self, job: Job) -> concurrent.futures.Future[Outcome]:
        return self.pool.submit(_pool_trial, _dumps(job))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


_RAY_STATES: dict[str, TrialState] = {}


def _ray_trial(token: str, payload: bytes, job: bytes) -> Outcome:
    """A Ray task: the state is unpickled once per worker process (keyed by the run's token)."""
    import cloudpickle

    if token not in _RAY_STATES:
        _RAY_STATES.clear()
        _RAY_STATES[token] = cloudpickle.loads(payload)
    return evaluate(_RAY_STATES[token], cloudpickle.loads(job))[0]


class _Ray:
    """Ray tasks on a cluster (`address`: an existing one, e.g. "ray://host:10001" or "auto"; None: start a local
    one in this process). The state is put in the object store once."""

    def __init__(self, state: TrialState, workers: int | None, address: str | None) -> None:
        try:
            import ray
        except ImportError as e:
            raise QuantirError("executor='ray' needs Ray: pip install 'quantir[tune]' (or ray)") from e
        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except Exception as e:
                where = f"the Ray cluster at {address!r}" if address else "a local Ray cluster"
                raise QuantirError(f"cannot connect to {where}: {e}") from e
        cpus = int(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]
        self.workers = max(1, min(workers or cpus, cpus))
        self.token = uuid.uuid4().hex
        self.state_ref = ray.put(_dumps(state))
        self.remote = ray.remote(num_cpus=1)(_ray_trial)

    def submit(self, job: Job) -> concurrent.futures.Future[Outcome]:
        future: concurrent.futures.Future[Outcome] = self.remote.remote(self.token, self.state_ref,
                                                                        _dumps(job)).future()  # fmt: skip
        return future

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


def make_executor(name: ExecutorName, state: TrialState, workers: int | None = None,
                  address: str | None = None) -> Executor | _Inline:  # fmt: skip
    if name == "sequential":
        return _Inline(state)
    if name == "process":
        return _Pool(state, max(1, workers or (multiprocessing.cpu_count() or 1)))
    if name == "ray":
        return _Ray(state, workers, address)
    raise QuantirError(f"unknown executor {name!r}; expected sequential, process or ray")


def run_trials(
    jobs: Sequence[Job],
    executor: Executor | _Inline,
    *,
    passes: Callable[[float], bool],
    stop_on_pass: bool,
    t0: float,
    deadline: float | None,
    on_record: Callable[[TrialRecord], None] | None = None,
) -> tuple[list[TrialRecord], str | None]:
    """Run `jobs` (at most `executor.workers` at a time) and take their outcomes in job order. Stops at the first
    passing trial (`stop_on_pass`), at an eval_fn error, or when the deadline stops new trials. Returns the records
    taken and why it stopped early (None: every job ran)."""
    records: list[TrialRecord] = []
    pending: dict[int, tuple[Job, float, concurrent.futures.Future[Outcome]]] = {}
    next_submit = next_take = 0
    reason: str | None = None
    try:
        while next_take < len(jobs):
            while reason is None and next_submit < len(jobs) and len(pending) < executor.workers:
                now = time.perf_counter()
                if deadline is not None and now >= deadline:
                    reason = "timeout"
                    break
                job = jobs[next_submit]
                pending[next_submit] = (job, now - t0, executor.submit(job))
                next_submit += 1
            if next_take not in pending:
                break  # nothing more was submitted (timeout)
            job, started, future = pending.pop(next_take)
            outcome = future.result()
            next_take += 1
            passed = outcome.result is not None and passes(outcome.result)
            record = TrialRecord(job.index, job.phase, job.description, job.config, job.fallback, outcome.result,
                                 passed, outcome.error, outcome.eval_failed, started, outcome.convert_seconds,
                                 outcome.eval_seconds)  # fmt: skip
            records.append(record)
            if on_record is not None:
                on_record(record)
            if outcome.eval_failed:
                reason = "eval_fn error"
                break
            if passed and stop_on_pass:
                reason = "goal met"
                break
    finally:
        for _, _, future in pending.values():
            future.cancel()
    return records, reason
