"""`quantir tune MODEL --calib DATA --eval SCRIPT.py:FUNC`: accuracy-driven tuning from the command line, with a
live table of trials on a terminal (one line per trial otherwise), the best artifact saved, and an HTML report."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantir.ir import QuantirError

if TYPE_CHECKING:  # the parser imports this module for every command: the compiler loads only for `tune`
    from quantir.compiler.quantized_model import QuantizedModel
    from quantir.compiler.tuning.trials import TrialRecord

__all__ = ["add_arguments", "coverage", "default_config_set", "load_eval_fn", "run_tune"]


def default_config_set() -> list[Any]:
    """quantir's defaults first, then INC's static tuning set (activation schemes by calibration algorithm)."""
    from quantir.compiler.config.quant_config import StaticQuantConfig

    inc_static = StaticQuantConfig(act_sym=[False, True], act_algo=["kl", "minmax"])  # type: ignore[arg-type]  # lists tune
    return [StaticQuantConfig(), inc_static]


def load_eval_fn(spec: str) -> Callable[..., Any]:
    """`path/to/script.py:function` -> the function; a clear error for a missing file, function or a script that
    fails to import."""
    path_text, sep, name = spec.rpartition(":")
    if not sep or not path_text or not name:
        raise QuantirError(f"--eval {spec!r}: expected SCRIPT.py:FUNCTION, e.g. --eval eval_digits.py:accuracy")
    path = Path(path_text)
    if not path.is_file():
        raise QuantirError(f"--eval {spec!r}: no such file {path}")
    module_name = f"quantir_eval_{abs(hash(str(path.resolve())))}"
    loader = importlib.util.spec_from_file_location(module_name, path)
    if loader is None or loader.loader is None:
        raise QuantirError(f"--eval {spec!r}: {path} is not a Python file")
    module = importlib.util.module_from_spec(loader)
    sys.modules[module_name] = module  # workers pickle the function by value from here
    try:
        loader.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise QuantirError(f"--eval {spec!r}: importing {path} raised {type(e).__name__}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(
            n
            for n, v in vars(module).items()
            if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module_name
        )
        raise QuantirError(
            f"--eval {spec!r}: {path} has no function {name!r}; it defines: {', '.join(found) or 'none'}"
        )
    return fn  # type: ignore[no-any-return]


def coverage(model: QuantizedModel) -> dict[str, Any]:
    """Int8 coverage of the saved artifact: counts of quantized ops, overall, for Conv/MatMul/Gemm and per type."""
    from quantir.backends.contract import HEAVY_OPS

    rows = model.decisions()
    by_type: dict[str, list[int]] = {}
    for d in rows:
        counts = by_type.setdefault(d.op_type, [0, 0])
        counts[0] += int(d.quantized)
        counts[1] += 1
    heavy = [d for d in rows if d.op_type in HEAVY_OPS]
    quantized = sum(d.quantized for d in rows)
    return {"quantized": quantized, "total": len(rows), "heavy_quantized": sum(d.quantized for d in heavy),
            "heavy_total": len(heavy), "by_type": by_type}  # fmt: skip


class _Progress:
    """A live table on a terminal (rich, when installed), else one printed line per trial."""

    def __init__(self, live: bool) -> None:
        self.rows: list[TrialRecord] = []
        self.live: Any = None
        if live:
            try:
                from rich.live import Live  # type: ignore[import-not-found, unused-ignore]
            except ImportError:
                return
            self.live = Live(self._table(), refresh_per_second=4, transient=False)
            self.live.start()

    def _table(self) -> Any:
        from rich.table import Table  # type: ignore[import-not-found, unused-ignore]

        table = Table(title="quantir tune")
        for column in ("trial", "phase", "config", "result", "seconds", "goal"):
            table.add_column(column)
        for r in self.rows:
            result = "error" if r.result is None else f"{r.result:.6g}"
            table.add_row(str(r.index), r.phase, r.description, result, f"{r.seconds:.2f}", "met" if r.passed else "")
        return table

    def __call__(self, record: TrialRecord) -> None:
        self.rows.append(record)
        if self.live is not None:
            self.live.update(self._table())
            return
        result = "error: " + (record.error or "") if record.result is None else f"{record.result:.6g}"
        mark = "  (meets the goal)" if record.passed else ""
        print(f"trial {record.index:>3} [{record.phase}] {record.description}: {result} in {record.seconds:.2f}s{mark}",
              flush=True)  # fmt: skip

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def run_tune(args: argparse.Namespace) -> int:
    from quantir.backends.registry import get_backend
    from quantir.compiler.config.quant_config import load_config
    from quantir.compiler.config.tuning_config import TuningConfig
    from quantir.compiler.isa import detect_cpu
    from quantir.compiler.tuning import autotune
    from quantir.compiler.tuning.report import write_html_report

    eval_fn = load_eval_fn(args.eval)
    backend = get_backend(args.to).name
    configs = [load_config(c) for c in args.config] if args.config else default_config_set()
    cfg = TuningConfig(configs, max_trials=args.max_trials, tolerable_loss=args.tolerable_loss,
                       timeout=args.timeout, criterion=args.criterion, higher_is_better=not args.lower_is_better,
                       policy=args.policy, fallback=not args.no_fallback, max_fallback_ops=args.max_fallback_ops,
                       executor="ray" if args.ray else args.executor, workers=args.workers,
                       ray_address=args.ray)  # fmt: skip
    progress = _Progress(sys.stdout.isatty())
    t0 = time.perf_counter()
    try:
        model = autotune(args.model, cfg, eval_fn, args.calib, backend=backend, on_trial=progress)
    finally:
        progress.close()
    result = model.tuning
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    artifact = model.save(out / backend)
    summary = {**result.summary(), "model": str(args.model), "backend": backend, "isa": detect_cpu().describe(),
               "coverage": coverage(model),
               "float_ops": [{"op": d.name, "op_type": d.op_type, "reason": d.reason}
                             for d in model.decisions() if not d.quantized]}  # fmt: skip
    report = write_html_report(summary, Path(args.report) if args.report else out / "tuning_report.html")
    print(result.outcome())
    cov = summary["coverage"]
    print(f"best: trial {result.best.index} {result.best.description}; int8 coverage {cov['quantized']}/"
          f"{cov['total']} ops, {cov['heavy_quantized']}/{cov['heavy_total']} Conv/MatMul/Gemm")  # fmt: skip
    print(f"saved {artifact} and the report {report} in {time.perf_counter() - t0:.1f}s on {summary['isa']}")
    return 0 if result.goal_met and result.error is None else 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an .onnx or .qir file")
    p.add_argument("--calib", required=True, help=".npz of calibration arrays keyed by input name (axis 0 = samples)")
    p.add_argument("--eval", required=True, help="SCRIPT.py:FUNCTION, called with each candidate model; returns a "
                   "number (higher is better unless --lower-is-better)")  # fmt: skip
    p.add_argument("--to", default="onnx-qdq", help="the target backend (default onnx-qdq)")
    p.add_argument("--config", action="append", help="a config file (YAML/JSON) of the tuning set; list-valued fields "
                   "expand; repeat for several (default: quantir's default, then INC's static set)")  # fmt: skip
    p.add_argument("--tolerable-loss", type=float, default=0.01, help="relative (default) or absolute loss allowed")
    p.add_argument("--criterion", choices=("relative", "absolute"), default="relative")
    p.add_argument("--lower-is-better", action="store_true", help="the metric is a loss or an error rate")
    p.add_argument(
        "--policy",
        choices=("first", "best"),
        default="first",
        help="first: stop at the first trial meeting the goal (INC); best: the best within the budget",
    )
    p.add_argument("--max-trials", type=int, default=100)
    p.add_argument("--timeout", type=float, default=0.0, help="seconds; no trial starts after it (0: none)")
    p.add_argument("--no-fallback", action="store_true", help="no sensitivity-ranked op fallback")
    p.add_argument("--max-fallback-ops", type=int, help="at most this many ops kept float by tuning")
    p.add_argument("--executor", choices=("sequential", "process", "ray"), default="sequential")
    p.add_argument("--workers", type=int, help="parallel trials (default: one per core)")
    p.add_argument("--ray", metavar="ADDRESS", help="run trials on the Ray cluster at ADDRESS ('local': start one)")
    p.add_argument("-o", "--output", required=True, help="folder for the best artifact and the report")
    p.add_argument("--report", help="the HTML report's path (default: OUTPUT/tuning_report.html)")
