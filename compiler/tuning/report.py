"""The HTML report of accuracy-driven tuning: one self-contained page (plotly.js inlined) from a tuning summary.

`write_html_report(summary, path)` checks the summary, plots trials, sensitivity and coverage, writes atomically.
"""

from __future__ import annotations

import contextlib
import html
import math
import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quantir.ir import QuantirError

__all__ = ["write_html_report"]

MAX_SENSITIVITY_OPS = 30
_LABEL_CHARS = 48
_HOVER_WRAP = 90

_PHASE_COLORS = {"config": "#1f77b4", "sensitivity": "#9467bd", "fallback": "#2ca02c"}
_OTHER_PHASE_COLOR = "#7f7f7f"
_FAILED_COLOR = "#d62728"
_GOAL_COLOR = "#2ca02c"
_BASELINE_COLOR = "#444444"
_QUANTIZED_COLOR = "#1f77b4"
_FLOAT_COLOR = "#ff7f0e"
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


# --------------------------------------------------------------------------------------------------------------------
# The checked summary


@dataclass(frozen=True)
class _Trial:
    index: int
    phase: str
    config: str
    result: float | None
    seconds: float
    passed: bool
    error: str | None


@dataclass(frozen=True)
class _Sensitivity:
    op: str
    op_type: str
    own_sqnr_db: float
    gain: float | None


@dataclass(frozen=True)
class _FloatOp:
    op: str
    op_type: str
    reason: str


@dataclass(frozen=True)
class _Coverage:
    quantized: int
    total: int
    heavy_quantized: int
    heavy_total: int
    by_type: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class _Summary:
    model: str
    backend: str
    isa: str
    criterion: str
    tolerable_loss: float
    higher_is_better: bool
    policy: str
    baseline: float
    goal: float
    goal_met: bool
    best_trial: int | None
    stopped_by: str
    wall_seconds: float
    conversion_seconds: float
    seconds_per_trial: float
    trials: tuple[_Trial, ...]
    sensitivity: tuple[_Sensitivity, ...]
    coverage: _Coverage
    float_ops: tuple[_FloatOp, ...]


def _bad(where: str, message: str) -> QuantirError:
    return QuantirError(f"tuning report: summary{where} {message}")


def _get(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise _bad(where, f"is missing the key {key!r} (has: {', '.join(sorted(map(str, data))) or 'nothing'})")
    return data[key]


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad(where, f"must be a mapping, not {type(value).__name__}")
    return value


def _sequence(value: Any, where: str) -> Sequence[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise _bad(where, f"must be a list, not {type(value).__name__}")
    return value


def _str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = _get(data, key, where)
    if not isinstance(value, str):
        raise _bad(f"{where}[{key!r}]", f"must be a string, not {type(value).__name__}")
    return value


def _opt_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = _get(data, key, where)
    if value is not None and not isinstance(value, str):
        raise _bad(f"{where}[{key!r}]", f"must be a string or None, not {type(value).__name__}")
    return value


def _bool(data: Mapping[str, Any], key: str, where: str) -> bool:
    value = _get(data, key, where)
    if not isinstance(value, bool):
        raise _bad(f"{where}[{key!r}]", f"must be true or false, not {value!r}")
    return value


def _int(data: Mapping[str, Any], key: str, where: str) -> int:
    value = _get(data, key, where)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{where}[{key!r}]", f"must be an integer, not {value!r}")
    return value


def _opt_int(data: Mapping[str, Any], key: str, where: str) -> int | None:
    return None if _get(data, key, where) is None else _int(data, key, where)


def _float(data: Mapping[str, Any], key: str, where: str) -> float:
    value = _get(data, key, where)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(f"{where}[{key!r}]", f"must be a finite number, not {value!r}")
    return float(value)


def _opt_float(data: Mapping[str, Any], key: str, where: str) -> float | None:
    return None if _get(data, key, where) is None else _float(data, key, where)


def _choice(data: Mapping[str, Any], key: str, where: str, choices: tuple[str, ...]) -> str:
    value = _str(data, key, where)
    if value not in choices:
        raise _bad(f"{where}[{key!r}]", f"must be one of {', '.join(map(repr, choices))}, not {value!r}")
    return value


def _check_trial(value: Any, where: str) -> _Trial:
    row = _mapping(value, where)
    return _Trial(
        index=_int(row, "index", where),
        phase=_choice(row, "phase", where, ("config", "sensitivity", "fallback")),
        config=_str(row, "config", where),
        result=_opt_float(row, "result", where),
        seconds=_float(row, "seconds", where),
        passed=_bool(row, "passed", where),
        error=_opt_str(row, "error", where),
    )


def _check_sensitivity(value: Any, where: str) -> _Sensitivity:
    row = _mapping(value, where)
    return _Sensitivity(
        op=_str(row, "op", where),
        op_type=_str(row, "op_type", where),
        own_sqnr_db=_float(row, "own_sqnr_db", where),
        gain=_opt_float(row, "gain", where),
    )


def _check_float_op(value: Any, where: str) -> _FloatOp:
    row = _mapping(value, where)
    return _FloatOp(op=_str(row, "op", where), op_type=_str(row, "op_type", where), reason=_str(row, "reason", where))


def _check_coverage(value: Any) -> _Coverage:
    where = "['coverage']"
    cov = _mapping(value, where)
    by_type_where = f"{where}['by_type']"
    by_type: list[tuple[str, int, int]] = []
    for op_type, counts in _mapping(_get(cov, "by_type", where), by_type_where).items():
        pair = _sequence(counts, f"{by_type_where}[{op_type!r}]")
        ok = len(pair) == 2 and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in pair)
        if not ok or pair[0] > pair[1]:
            raise _bad(f"{by_type_where}[{op_type!r}]", f"must be [quantized_count, total_count], not {list(pair)!r}")
        by_type.append((str(op_type), pair[0], pair[1]))
    by_type.sort(key=lambda row: (-row[2], row[0]))
    return _Coverage(
        quantized=_int(cov, "quantized", where),
        total=_int(cov, "total", where),
        heavy_quantized=_int(cov, "heavy_quantized", where),
        heavy_total=_int(cov, "heavy_total", where),
        by_type=tuple(by_type),
    )


def _check(summary: Mapping[str, Any]) -> _Summary:
    data = _mapping(summary, "")
    trials = _sequence(_get(data, "trials", ""), "['trials']")
    sensitivity = _sequence(_get(data, "sensitivity", ""), "['sensitivity']")
    float_ops = _sequence(_get(data, "float_ops", ""), "['float_ops']")
    return _Summary(
        model=_str(data, "model", ""),
        backend=_str(data, "backend", ""),
        isa=_str(data, "isa", ""),
        criterion=_choice(data, "criterion", "", ("relative", "absolute")),
        tolerable_loss=_float(data, "tolerable_loss", ""),
        higher_is_better=_bool(data, "higher_is_better", ""),
        policy=_choice(data, "policy", "", ("first", "best")),
        baseline=_float(data, "baseline", ""),
        goal=_float(data, "goal", ""),
        goal_met=_bool(data, "goal_met", ""),
        best_trial=_opt_int(data, "best_trial", ""),
        stopped_by=_str(data, "stopped_by", ""),
        wall_seconds=_float(data, "wall_seconds", ""),
        conversion_seconds=_float(data, "conversion_seconds", ""),
        seconds_per_trial=_float(data, "seconds_per_trial", ""),
        trials=tuple(_check_trial(t, f"['trials'][{i}]") for i, t in enumerate(trials)),
        sensitivity=tuple(_check_sensitivity(s, f"['sensitivity'][{i}]") for i, s in enumerate(sensitivity)),
        coverage=_check_coverage(_get(data, "coverage", "")),
        float_ops=tuple(_check_float_op(f, f"['float_ops'][{i}]") for i, f in enumerate(float_ops)),
    )


# --------------------------------------------------------------------------------------------------------------------
# Formatting


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.7g}"


def _secs(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _loss(s: _Summary) -> str:
    return f"{s.tolerable_loss * 100:.3g} %" if s.criterion == "relative" else f"{s.tolerable_loss:.5g}"


def _per_trial(s: _Summary) -> str:
    text = f"{_secs(s.seconds_per_trial)} per trial"
    if s.conversion_seconds > 0:
        ratio = s.seconds_per_trial / s.conversion_seconds
        text += f" = {ratio:.3g} times one full conversion ({_secs(s.conversion_seconds)})"
    else:
        text += f" (one full conversion: {_secs(s.conversion_seconds)})"
    return text


def _wrap(text: str, width: int = _HOVER_WRAP) -> str:
    """Escape `text` for plotly's pseudo-HTML text, broken into lines of at most `width` characters."""
    lines = [text[i : i + width] for i in range(0, len(text), width)] or [""]
    return "<br>".join(html.escape(line, quote=False) for line in lines)


def _label(text: str) -> str:
    """`text` cut in the middle to `_LABEL_CHARS` characters: op names differ at both ends (prefix and index)."""
    if len(text) <= _LABEL_CHARS:
        return text
    tail = (_LABEL_CHARS - 1) * 3 // 5
    return text[: _LABEL_CHARS - 1 - tail] + "…" + text[-tail:]


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "—"


# --------------------------------------------------------------------------------------------------------------------
# Plots


def _layout(title: str, height: int) -> dict[str, Any]:
    return {
        "title": {"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 16}},
        "height": height,
        "template": "plotly_white",
        "margin": {"l": 70, "r": 30, "t": 70, "b": 60},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
        "hoverlabel": {"align": "left"},
    }


def _trials_figure(go: Any, s: _Summary) -> Any:
    fig = go.Figure()
    values = [t.result for t in s.trials if t.result is not None]
    lo = min([*values, s.goal, s.baseline])
    hi = max([*values, s.goal, s.baseline])
    pad = (hi - lo) * 0.12 or abs(hi) * 0.05 or 1.0
    failed_y = lo - pad
    y_range = [failed_y - pad * 0.8, hi + pad]

    def hover(t: _Trial) -> str:
        lines = [
            f"<b>trial {t.index}</b> ({html.escape(t.phase)}) — {'passed' if t.passed else 'did not pass'}",
            f"result: {_num(t.result)}    time: {_secs(t.seconds)}",
            f"config: {_wrap(t.config)}",
        ]
        if t.error is not None:
            lines.append(f"error: {_wrap(t.error)}")
        return "<br>".join(lines)

    phases = list(dict.fromkeys(t.phase for t in s.trials))
    for phase in phases:
        rows = [t for t in s.trials if t.phase == phase and t.result is not None]
        if not rows:
            continue
        fig.add_trace(
            go.Scatter(
                x=[t.index for t in rows],
                y=[t.result for t in rows],
                mode="markers",
                name=f"{phase} trials",
                marker={
                    "size": 12,
                    "color": _PHASE_COLORS.get(phase, _OTHER_PHASE_COLOR),
                    "symbol": ["circle" if t.passed else "circle-open" for t in rows],
                    "line": {"width": 2, "color": _PHASE_COLORS.get(phase, _OTHER_PHASE_COLOR)},
                },
                text=[hover(t) for t in rows],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    failed = [t for t in s.trials if t.result is None]
    if failed:
        fig.add_trace(
            go.Scatter(
                x=[t.index for t in failed],
                y=[failed_y] * len(failed),
                mode="markers+text",
                name="failed trials (no result)",
                marker={"size": 13, "color": _FAILED_COLOR, "symbol": "x"},
                text=["failed"] * len(failed),
                textposition="top center",
                textfont={"color": _FAILED_COLOR, "size": 11},
                customdata=[hover(t) for t in failed],
                hovertemplate="%{customdata}<extra></extra>",
            )
        )
    best = [t for t in s.trials if t.index == s.best_trial and t.result is not None]
    if best:
        fig.add_trace(
            go.Scatter(
                x=[best[0].index],
                y=[best[0].result],
                mode="markers",
                name="best trial",
                marker={"size": 24, "color": "#222", "symbol": "star-open", "line": {"width": 1.5}},
                hoverinfo="skip",
            )
        )
    fig.add_hline(
        y=s.goal,
        line={"color": _GOAL_COLOR, "dash": "dash", "width": 2},
        annotation={"text": f"goal {_num(s.goal)}", "font": {"color": _GOAL_COLOR}},
        annotation_position="top left",
    )
    fig.add_hline(
        y=s.baseline,
        line={"color": _BASELINE_COLOR, "dash": "dot", "width": 2},
        annotation={"text": f"float baseline {_num(s.baseline)}", "font": {"color": _BASELINE_COLOR}},
        annotation_position="top right" if abs(s.baseline - s.goal) < pad else "top left",
    )
    direction = "higher is better" if s.higher_is_better else "lower is better"
    fig.update_layout(_layout(f"Accuracy per trial ({direction}; open markers did not pass)", 440))
    indices = [t.index for t in s.trials]
    x_range = [min(indices) - 0.6, max(indices) + 0.6] if indices else [-0.6, 0.6]
    fig.update_xaxes(title_text="trial", dtick=1, range=x_range, zeroline=False)
    fig.update_yaxes(title_text="result (eval_fn)", range=y_range, zeroline=False)
    return fig


def _sensitivity_figure(go: Any, make_subplots: Any, s: _Summary) -> Any:
    rows = sorted(s.sensitivity, key=lambda r: (r.own_sqnr_db, r.op))[:MAX_SENSITIVITY_OPS]
    labels: list[str] = []
    for r in rows:
        label = html.escape(_label(f"{r.op} ({r.op_type})"), quote=False)
        while label in labels:
            label += "\u200b"  # keep categories distinct when two truncated names collide
        labels.append(label)
    hover = [
        f"<b>{_wrap(r.op)}</b> ({html.escape(r.op_type)})<br>own SQNR: {r.own_sqnr_db:.3g} dB"
        " (the noise this op adds alone)"
        + ("<br>eval gain: not measured" if r.gain is None else f"<br>eval gain when kept float: {r.gain:+.4g}")
        for r in rows
    ]
    measured = [i for i, r in enumerate(rows) if r.gain is not None]
    shown = f"top {len(rows)} of {len(s.sensitivity)}" if len(s.sensitivity) > len(rows) else f"{len(rows)} ops"
    title = f"Per-op sensitivity, worst first ({shown}; {len(measured)} with a measured eval gain)"
    panels = ["own SQNR when quantized (dB; lower = more sensitive)"]
    if measured:  # a second panel sharing the op axis: the eval gain has other units than dB
        panels.append("eval gain when kept float (fallback trials)")
    fig = make_subplots(
        rows=1,
        cols=len(panels),
        shared_yaxes=True,
        column_widths=[0.62, 0.38] if measured else None,
        horizontal_spacing=0.03,
        subplot_titles=panels,
    )
    fig.add_trace(
        go.Bar(
            y=labels,
            x=[r.own_sqnr_db for r in rows],
            orientation="h",
            name="own SQNR (dB)",
            marker={"color": "#8c564b"},
            text=[f"{r.own_sqnr_db:.3g}" for r in rows],
            textposition="outside",
            textangle=0,
            cliponaxis=False,
            customdata=hover,
            hovertemplate="%{customdata}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    worst = max((r.own_sqnr_db for r in rows), default=0.0) or 1.0
    fig.update_layout(_layout(title, max(340, 26 * len(rows) + 150)))
    fig.update_layout(margin={"l": 20, "t": 90, "b": 40}, bargap=0.3, showlegend=False)
    fig.update_annotations(font={"size": 13})
    fig.update_yaxes(autorange="reversed", automargin=True, tickfont={"size": 11})
    fig.update_xaxes(range=[min(0.0, -0.02 * worst), worst * 1.1], row=1, col=1)
    if measured:
        gains = [rows[i].gain or 0.0 for i in measured]
        fig.add_trace(
            go.Bar(
                y=[labels[i] for i in measured],
                x=gains,
                orientation="h",
                name="eval gain",
                marker={"color": [_GOAL_COLOR if g >= 0 else _FAILED_COLOR for g in gains]},
                text=[f"{g:+.3g}" for g in gains],
                textposition="outside",
                textangle=0,
                cliponaxis=False,
                customdata=[hover[i] for i in measured],
                hovertemplate="%{customdata}<extra></extra>",
            ),
            row=1,
            col=2,
        )
        unmeasured = [i for i in range(len(rows)) if i not in set(measured)]
        fig.add_trace(
            go.Scatter(
                y=[labels[i] for i in unmeasured],
                x=[0.0] * len(unmeasured),
                mode="text",
                text=["not measured"] * len(unmeasured),
                textposition="middle right",
                textfont={"color": "#999", "size": 10},
                name="not measured",
                customdata=[hover[i] for i in unmeasured],
                hovertemplate="%{customdata}<extra></extra>",
            ),
            row=1,
            col=2,
        )
        span = max((abs(g) for g in gains), default=0.0) or 1.0
        lo = min([0.0, *gains])
        hi = max([0.0, *gains])
        fig.update_xaxes(
            range=[lo - 0.35 * span if lo < 0 else -0.05 * span, hi + 0.35 * span],
            zeroline=True,
            zerolinecolor="#888",
            zerolinewidth=1,
            tickformat="~g",
            row=1,
            col=2,
        )
    return fig


def _coverage_figure(go: Any, s: _Summary) -> Any:
    cov = s.coverage
    types = [html.escape(t) for t, _, _ in cov.by_type]
    quantized = [q for _, q, _ in cov.by_type]
    kept = [total - q for _, q, total in cov.by_type]
    fig = go.Figure()
    for name, counts, color in (("int8", quantized, _QUANTIZED_COLOR), ("float", kept, _FLOAT_COLOR)):
        fig.add_trace(
            go.Bar(
                x=types,
                y=counts,
                name=name,
                marker={"color": color},
                text=[c or "" for c in counts],
                textposition="inside",
                insidetextanchor="middle",
                textangle=0,
                hovertemplate=f"%{{x}}: %{{y}} {name}<extra></extra>",
            )
        )
    for (_, q, total), label in zip(cov.by_type, types, strict=True):
        fig.add_annotation(
            x=label, y=total, text=f"{q}/{total}<br>{_pct(q, total)}", showarrow=False, yanchor="bottom", yshift=2
        )
    title = (
        f"Final int8 coverage: {cov.quantized}/{cov.total} ops ({_pct(cov.quantized, cov.total)}), "
        f"heavy ops {cov.heavy_quantized}/{cov.heavy_total} ({_pct(cov.heavy_quantized, cov.heavy_total)})"
    )
    fig.update_layout(_layout(title, 400), barmode="stack", uniformtext={"minsize": 10, "mode": "hide"})
    fig.update_layout(legend={"traceorder": "normal"})
    top = max((total for _, _, total in cov.by_type), default=1)
    fig.update_xaxes(title_text="op type", type="category")
    fig.update_yaxes(title_text="ops", range=[0, top * 1.2 + 1])
    return fig


# --------------------------------------------------------------------------------------------------------------------
# The page

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #222;
  background: #f5f6f8; }
main { max-width: 1320px; margin: 0 auto; padding: 20px 24px 40px; }
h1 { font-size: 22px; margin: 0 0 4px; overflow-wrap: anywhere; }
h2 { font-size: 17px; margin: 28px 0 8px; }
.sub { color: #555; margin: 0 0 14px; }
.badge { display: inline-block; padding: 3px 12px; border-radius: 12px; font-weight: 600; color: #fff;
  margin-left: 6px; font-size: 16px; vertical-align: middle; }
.met { background: #2e7d32; } .notmet { background: #c62828; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 8px 16px;
  background: #fff; border: 1px solid #dde; border-radius: 8px; padding: 12px 16px; margin: 0; }
.facts div { min-width: 0; }
.facts dt { color: #667; font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
.facts dd { margin: 0; font-size: 15px; overflow-wrap: anywhere; }
.card { background: #fff; border: 1px solid #dde; border-radius: 8px; padding: 6px; margin-top: 16px; }
.note { background: #fff; border: 1px solid #dde; border-radius: 8px; padding: 14px 16px; margin-top: 16px;
  color: #555; }
table { border-collapse: collapse; width: 100%; background: #fff; font-size: 13px; }
th, td { border: 1px solid #dde; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef0f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; overflow-wrap: anywhere; }
tr.best td { background: #e8f5e9; } tr.failed td { background: #fdecea; }
.yes { color: #2e7d32; font-weight: 600; } .no { color: #c62828; }
"""


def _facts(s: _Summary) -> str:
    best = "none" if s.best_trial is None else str(s.best_trial)
    facts = [
        ("backend", s.backend),
        ("CPU ISA", s.isa),
        ("criterion", f"{s.criterion}, tolerable loss {_loss(s)}"),
        ("metric", "higher is better" if s.higher_is_better else "lower is better"),
        ("float baseline", _num(s.baseline)),
        ("goal", _num(s.goal)),
        ("policy / best trial", f"{s.policy} / {best}"),
        ("stopped by", s.stopped_by),
        ("trials", f"{len(s.trials)} ({sum(t.result is None for t in s.trials)} failed)"),
        ("wall time", _secs(s.wall_seconds)),
        ("time per trial", _per_trial(s)),
        ("ops kept float", str(len(s.float_ops))),
    ]
    items = "".join(f"<div><dt>{_esc(k)}</dt><dd>{_esc(v)}</dd></div>" for k, v in facts)
    return f'<dl class="facts">{items}</dl>'


def _trials_table(s: _Summary) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("#", "phase", "config", "result", "seconds", "passed", "error"))
    body = []
    for t in s.trials:
        cls = "best" if t.index == s.best_trial else "failed" if t.result is None else ""
        passed = '<span class="yes">yes</span>' if t.passed else '<span class="no">no</span>'
        body.append(
            f'<tr class="{cls}"><td class="num">{t.index}</td><td>{_esc(t.phase)}</td>'
            f'<td class="code">{_esc(t.config)}</td><td class="num">{_esc(_num(t.result))}</td>'
            f'<td class="num">{_esc(_secs(t.seconds))}</td><td>{passed}</td>'
            f'<td class="code">{_esc(t.error or "")}</td></tr>'
        )
    if not body:
        body.append('<tr><td colspan="7">no trial ran</td></tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _float_ops_table(s: _Summary) -> str:
    if not s.float_ops:
        return '<p class="note">Every op that could be quantized is int8: no op is kept float.</p>'
    rows = "".join(
        f'<tr><td class="code">{_esc(f.op)}</td><td>{_esc(f.op_type)}</td><td>{_esc(f.reason)}</td></tr>'
        for f in s.float_ops
    )
    return f"<table><thead><tr><th>op</th><th>op type</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table>"


def _render(s: _Summary) -> str:
    import plotly.graph_objects as go  # type: ignore[import-untyped]
    from plotly.subplots import make_subplots  # type: ignore[import-untyped]

    figures: list[tuple[str, Any]] = [("trials", _trials_figure(go, s))]
    if s.sensitivity:
        figures.append(("sensitivity", _sensitivity_figure(go, make_subplots, s)))
    figures.append(("coverage", _coverage_figure(go, s)))
    divs: dict[str, str] = {}
    for i, (name, fig) in enumerate(figures):
        divs[name] = fig.to_html(
            full_html=False,
            include_plotlyjs=i == 0,
            config=_PLOT_CONFIG,
            div_id=f"quantir-plot-{name}",
            default_width="100%",
            default_height=f"{fig.layout.height}px",
        )
    if "sensitivity" in divs:
        sensitivity = f'<div class="card">{divs["sensitivity"]}</div>'
    else:
        sensitivity = (
            '<p class="note">No fallback phase ran: there is no per-op sensitivity to show '
            f"(stopped by: {_esc(s.stopped_by)}).</p>"
        )
    badge = (
        '<span class="badge met">goal met</span>' if s.goal_met else '<span class="badge notmet">goal NOT met</span>'
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>quantir tuning report: {_esc(s.model)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>Accuracy-driven tuning: {_esc(s.model)} {badge}</h1>
<p class="sub">{len(s.trials)} trials, stopped by {_esc(s.stopped_by)}; goal {_esc(_num(s.goal))} \
vs float baseline {_esc(_num(s.baseline))}.</p>
{_facts(s)}
<div class="card">{divs["trials"]}</div>
{sensitivity}
<div class="card">{divs["coverage"]}</div>
<h2>Trials</h2>
{_trials_table(s)}
<h2>Ops kept float ({len(s.float_ops)})</h2>
{_float_ops_table(s)}
</main>
</body>
</html>
"""


def write_html_report(summary: Mapping[str, Any], path: str | os.PathLike[str]) -> pathlib.Path:
    """Write the HTML report of a tuning `summary` to `path` (atomically; parent folder created); return the path.

    The page is self-contained (plotly.js inlined) and renders offline. A summary that does not follow the schema
    raises `QuantirError` naming the missing or bad key.
    """
    checked = _check(summary)
    page = _render(checked)
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(page)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return target
