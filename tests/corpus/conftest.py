"""The corpus table: every row the corpus test measured, printed once at the end of the run."""

from __future__ import annotations

from typing import Any

import pytest

ROWS: list[dict[str, Any]] = []


@pytest.fixture(scope="session")
def corpus_rows() -> list[dict[str, Any]]:
    """Where the corpus test leaves one row per model and backend, for the table."""
    return ROWS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    tr = terminalreporter
    tr.section("quantir corpus (default config, held-out data)")
    tr.write_line("| model | backend | int8 heavy ops (runtime) | cosine | metric | seconds |")
    tr.write_line("|---|---|---|---|---|---|")
    for r in ROWS:
        metric = f"{r['metric']} {r['value']:.2f}" if r.get("value") is not None else ""
        tr.write_line(f"| {r['model']} | {r['backend']} | {r['int8']}/{r['heavy']} | {r['cosine']:.4f} | {metric} | "
                      f"{r['seconds']:.1f} |")  # fmt: skip
