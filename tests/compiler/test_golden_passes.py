"""Golden textual-IR tests for passes: `golden/NAME.in.qir` run through the pipeline in `NAME.pipeline` must print
exactly `golden/NAME.out.qir`. Set QUANTIR_ACCEPT=1 to rewrite the expected files after a deliberate change.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quantir.compiler.pass_manager import PassManager, parse_pipeline
from quantir.compiler.passes import builtin_registry
from quantir.ir import parse, print_graph

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name.removesuffix(".in.qir") for p in GOLDEN.glob("*.in.qir"))


@pytest.mark.parametrize("case", CASES)
def test_pass_output_matches_golden(case: str) -> None:
    source = GOLDEN / f"{case}.in.qir"
    pipeline = (GOLDEN / f"{case}.pipeline").read_text().strip()
    graph = parse(source.read_text(), filename=str(source))
    PassManager(parse_pipeline(pipeline, builtin_registry())).run(graph)
    got = print_graph(graph)
    expected_path = GOLDEN / f"{case}.out.qir"
    if os.environ.get("QUANTIR_ACCEPT") == "1":
        expected_path.write_text(got)
    assert got == expected_path.read_text(), f"{case}: rerun with QUANTIR_ACCEPT=1 if the change is intended"
    assert print_graph(parse(got)) == got


def test_golden_cases_exist() -> None:
    assert {"canonicalize_bn_fold", "annotate_cnn", "dce"} <= set(CASES)
