"""The `quantir` command line: argument parsing, dispatch, and the one place errors become messages.

Every command exits non-zero with a one-paragraph message on bad input; no library traceback is shown
unless QUANTIR_TRACEBACK=1 is set.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from quantir.ir import QuantirError

__all__ = ["main"]

EXIT_OK, EXIT_DIFFERENT, EXIT_ERROR, EXIT_INTERNAL = 0, 1, 2, 3


def _cmd_dump(args: argparse.Namespace) -> int:
    from quantir.compiler.model_io import load_graph
    from quantir.ir import textio, verify
    from quantir.ir.printer import print_graph

    graph = load_graph(args.model)
    verify(graph)
    if args.output is None:
        sys.stdout.write(print_graph(graph))
        return EXIT_OK
    out = Path(args.output)
    textio.save(graph, out)
    sidecar = out.with_suffix(".safetensors")
    extra = f", sidecar {sidecar} ({sidecar.stat().st_size / 1e6:.1f} MB)" if sidecar.exists() else ""
    print(f"wrote {out}: {len(graph)} nodes, {len(graph.constants)} constants{extra}")
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from quantir.compiler.model_io import load_graph
    from quantir.ir import verify

    graph = load_graph(args.file)
    verify(graph)
    quantized = sum(1 for v in graph.values() if v.quant is not None)
    print(f"{args.file}: ok ({len(graph)} nodes, {len(graph.constants)} constants, {quantized} quantized values)")
    return EXIT_OK


def _cmd_diff(args: argparse.Namespace) -> int:
    from quantir.compiler.model_io import load_graph
    from quantir.tools.ir_diff import diff_graphs

    a, b = load_graph(args.a), load_graph(args.b)
    report = diff_graphs(a, b, name_a=str(args.a), name_b=str(args.b))
    if report is None:
        print(f"{args.a} and {args.b} are structurally equal")
        return EXIT_OK
    print(report)
    return EXIT_DIFFERENT


def _cmd_export(args: argparse.Namespace) -> int:
    from quantir.compiler.model_io import export_onnx, load_graph
    from quantir.ir import verify

    graph = load_graph(args.file)
    verify(graph)
    export_onnx(graph, args.output)
    print(f"wrote {args.output}: {len(graph)} nodes")
    return EXIT_OK


def _cmd_opt(args: argparse.Namespace) -> int:
    from quantir.compiler.model_io import load_graph
    from quantir.compiler.pass_manager import PassManager, PrintMode, parse_pipeline
    from quantir.compiler.passes import builtin_registry
    from quantir.ir import textio, verify
    from quantir.ir.printer import print_graph

    graph = load_graph(args.file)
    verify(graph)
    mode: PrintMode | None = "all" if args.print_ir_after_all else "change" if args.print_ir_after_change else None
    passes = parse_pipeline(args.pipeline, builtin_registry())
    manager = PassManager(passes, print_ir_after=mode, reproducer_dir=args.reproducer)
    records = manager.run(graph)
    if args.output:
        textio.save(graph, args.output)
    else:
        sys.stdout.write(print_graph(graph))
    summary = ", ".join(
        f"{r.name}: {'changed' if r.changed else 'unchanged'} ({r.seconds * 1e3:.1f} ms)" for r in records
    )
    print(f"pipeline {manager.pipeline}: {summary}", file=sys.stderr)
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    from quantir.tools.dev.bench import main as bench_main

    return bench_main(args)


def _cmd_layers(args: argparse.Namespace) -> int:
    """`quantir layers MODEL --calib DATA.npz`: every quantized activation against the float model, in SQNR."""
    import json
    from pathlib import Path

    from quantir.backends.onnx_proto.artifact import read_manifest
    from quantir.compiler.calibration.data import feeds
    from quantir.compiler.layer_error import layer_errors, rows_as_json
    from quantir.frontends.onnx import import_onnx
    from quantir.ir.atomic import atomic_binary_file

    path = Path(args.model)
    if path.is_dir():
        doc = read_manifest(path)
        if doc is None:
            raise QuantirError(f"{path} is a folder but not a quantir artifact (no readable quantir.json)")
        path = path / str(doc.get("reference", doc.get("model", "model.onnx")))  # OpenVINO: its QDQ reference
    if not path.is_file() or path.suffix != ".onnx":
        raise QuantirError(f"{args.model}: expected a quantized .onnx file or a quantir artifact folder")
    graph = import_onnx(path)
    float_graph = import_onnx(args.float_model, qdq=False) if args.float_model else None
    batches = feeds(args.calib, graph, sampling_size=args.samples, batch_size=args.batch_size)
    report = layer_errors(graph, batches, float_graph=float_graph)
    print(report.format(args.top))
    if args.json:
        with atomic_binary_file(Path(args.json)) as f:  # a reader never sees a half-written file
            f.write(json.dumps({"samples": report.samples, "rows": rows_as_json(report)}, indent=2).encode())
    return EXIT_OK


def _cmd_convert(args: argparse.Namespace) -> int:
    from quantir.tools.convert import run_convert

    return run_convert(args)


def _cmd_compare(args: argparse.Namespace) -> int:
    """`quantir compare DIR [--calib DATA.npz]`: two runtimes (e.g. ORT vs OpenVINO) on the same IR, max disagreement
    in output LSB.

    Inputs: the arrays of `--calib` keyed by input name (axis 0 = samples; the first `--samples`). Without
    `--calib`, uniform random inputs in [0, 1) (integer inputs: ones) of the model's input shapes, dynamic
    dimensions set to 8, with a printed warning: such data exercise the arithmetic but not realistic ranges.
    Exit 1 when an output disagrees by more than `--max-lsb` steps.
    """
    import numpy as np
    import onnx

    from quantir.tools.crossrt import artifacts, cross_runtime_all, reference_model

    if args.command == "verify":
        print("quantir: note: `quantir verify` is now `quantir compare` (`quantir ir verify` checks IR files)",
              file=sys.stderr)  # fmt: skip
    backend, first = artifacts(args.dir)[0]
    graph = onnx.load(str(reference_model(backend, first)), load_external_data=False).graph
    init_names = {i.name for i in graph.initializer}
    specs = [i for i in graph.input if i.name not in init_names]
    if args.calib:
        with np.load(args.calib) as data:
            missing = [i.name for i in specs if i.name not in data.files]
            if missing:
                raise QuantirError(f"--calib {args.calib}: no array for input(s) {', '.join(missing)}")
            inputs = {i.name: np.asarray(data[i.name])[: args.samples] for i in specs}
    else:
        print("quantir: warning: no --calib given; using random inputs of the model's input shapes (dynamic "
              "dimensions = 8), which do not have the calibration data's ranges", file=sys.stderr)  # fmt: skip
        rng = np.random.default_rng(0)
        inputs = {}
        for i in specs:
            t = i.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 8 for d in t.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
            inputs[i.name] = (
                rng.random(shape).astype(dtype) if np.issubdtype(dtype, np.floating) else np.ones(shape, dtype)
            )
    reports = cross_runtime_all(args.dir, inputs)
    ok_all = True
    for report in reports:
        print(report.format())
        ok = report.ok(args.max_lsb)
        ok_all &= ok
        worst = report.max_lsb
        verdict = "agree" if ok else "DISAGREE"
        shown = "-" if worst is None else f"{worst:.3f}"
        print(f"{report.runtime_a} and {report.runtime_b} {verdict}: worst output {shown} LSB "
              f"(limit {args.max_lsb:g})")  # fmt: skip
    return EXIT_OK if ok_all else EXIT_DIFFERENT


def _cmd_tune(args: argparse.Namespace) -> int:
    from quantir.tools.tune import run_tune

    return run_tune(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from quantir.tools.demo import run_demo

    return run_demo(workdir=args.workdir)


_BATCH_HELP = "samples per batch cut from --calib (default: the batch the model's inputs fix, else 32)"


def _build_parser() -> argparse.ArgumentParser:
    from quantir.backends.registry import DEFAULT_BACKEND, backend_names

    parser = argparse.ArgumentParser(prog="quantir", description="quantir: one quantized IR, many runtimes.")
    parser.add_argument("--version", action="version", version="quantir 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ir = sub.add_parser("ir", help="dump, verify, diff and export the textual IR")
    ir_sub = ir.add_subparsers(dest="ir_command", required=True, metavar="IR_COMMAND")
    p = ir_sub.add_parser("dump", help="import a model and write its IR (.qir plus a .safetensors sidecar)")
    p.add_argument("model", help="an .onnx or .qir file")
    p.add_argument("-o", "--output", help="the .qir file to write (default: print to stdout)")
    p.set_defaults(func=_cmd_dump)
    p = ir_sub.add_parser("verify", help="parse and verify an IR file (or import and verify a model)")
    p.add_argument("file")
    p.set_defaults(func=_cmd_verify)
    p = ir_sub.add_parser("diff", help="structural diff of two IR files or models; exit 1 if they differ")
    p.add_argument("a")
    p.add_argument("b")
    p.set_defaults(func=_cmd_diff)
    p = ir_sub.add_parser("export", help="emit an IR file as a float ONNX model")
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.set_defaults(func=_cmd_export)

    p = ir_sub.add_parser("opt", help="run a pass pipeline over an IR file, e.g. -p dce")
    p.add_argument("file")
    p.add_argument("-p", "--pipeline", required=True, help="passes, e.g. 'dce' or 'a,b{option=value}'")
    p.add_argument("-o", "--output", help="the .qir file to write (default: print to stdout)")
    p.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass (stderr)")
    p.add_argument("--print-ir-after-change", action="store_true", help="print the IR after passes that change it")
    p.add_argument("--reproducer", help="directory for a reproducer (input IR + pipeline) if a pass fails")
    p.set_defaults(func=_cmd_opt)

    from quantir.tools.dev.bench import add_arguments as add_bench_arguments

    p = sub.add_parser("bench", help="benchmark quantir against ONNX Runtime's quantize_static (digits, MiniLM)")
    add_bench_arguments(p)
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("convert", help="quantize a model for a target runtime, verify it and report")
    p.add_argument("model", help="an .onnx or .qir file")
    targets = ", ".join(n.replace("_", "-") for n in backend_names())
    default = DEFAULT_BACKEND.replace("_", "-")
    p.add_argument("--to", default=default, help=f"target: {targets} or all (default: {default})")
    p.add_argument("--calib", required=False,
                   help=".npz of calibration arrays keyed by input name (axis 0 = samples); "
                   "not needed for a model that already contains QuantizeLinear/DequantizeLinear")  # fmt: skip
    p.add_argument("--requantize-weights", action="store_true",
                   help="requantize an already-quantized model's weights for the target's int8 rules")  # fmt: skip
    p.add_argument("--accept-low-accuracy", action="store_true",
                   help="keep an artifact whose output collapses against the float model (mean cosine below "
                   "0.9; by default that fails, naming the first layer whose error collapses)")  # fmt: skip
    p.add_argument("--config", help='a config as YAML or JSON: StaticQuantConfig, INC\'s {"rtn": ...} or FP8 JSON form')
    p.add_argument("--sampling-size", type=int, help="calibration samples to use (default: the config's, 100)")
    p.add_argument("-o", "--output", required=True, help="the artifact folder to write")
    p.add_argument("--batch-size", type=int, help=_BATCH_HELP)
    p.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass (stderr)")
    p.add_argument("--print-ir-after-change", action="store_true", help="print the IR after passes that change it")
    p.set_defaults(func=_cmd_convert)

    for name, text in (
        ("compare", "compare the artifacts of one quantized IR across runtimes (e.g. ORT vs OpenVINO), in output LSB"),
        ("verify", "deprecated name of `quantir compare`"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("dir", help="a `quantir convert --to all` output folder, or one artifact inside it")
        p.add_argument("--calib", help=".npz of input arrays keyed by input name (default: random inputs, warned)")
        p.add_argument("--samples", type=int, default=256, help="use the first N samples of --calib (default 256)")
        p.add_argument("--max-lsb", type=float, default=1.0, help="exit 1 above this many LSB (default 1)")
        p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("layers", help="per-layer error of a quantized model against its float self (SQNR per tensor)")
    p.add_argument("model", help="a quantized (QDQ) .onnx file, or a quantir artifact folder")
    p.add_argument("--calib", required=True, help=".npz of input arrays keyed by input name (axis 0 = samples)")
    p.add_argument("--samples", type=int, default=256, help="use the first N samples of --calib (default 256)")
    p.add_argument("--top", type=int, help="show only the N worst tensors, worst first (default: all, graph order)")
    p.add_argument("--float", dest="float_model",
                   help="the float .onnx model, tensors matched by name, for the end-to-end error (default: the "
                   "model with its Q/DQ removed, whose weights are already quantized)")  # fmt: skip
    p.add_argument("--batch-size", type=int, help=_BATCH_HELP)
    p.add_argument("--json", help="also write every row to this JSON file")
    p.set_defaults(func=_cmd_layers)

    from quantir.tools.tune import add_arguments as add_tune_arguments

    p = sub.add_parser("tune", help="accuracy-driven tuning: the best config (and op fallbacks) meeting an eval goal")
    add_tune_arguments(p)
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("demo", help="run the bundled example end to end and print what it measured")
    p.add_argument("--workdir", help="where to write artifacts (default: a temporary directory)")
    p.set_defaults(func=_cmd_demo)
    return parser


def _paragraph(prefix: str, message: str) -> str:
    first, _, rest = message.partition("\n")
    wrapped = textwrap.fill(
        f"{prefix}{first}", width=100, subsequent_indent="  ", break_on_hyphens=False, break_long_words=False
    )
    return wrapped + ("\n" + rest if rest else "")


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    if os.environ.get("QUANTIR_TRACEBACK") == "1":
        return func(args)
    try:
        return func(args)
    except QuantirError as e:
        print(_paragraph("quantir: error: ", str(e)), file=sys.stderr)
        return EXIT_ERROR
    except (OSError, MemoryError) as e:
        print(_paragraph("quantir: error: ", f"{type(e).__name__}: {e}"), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("quantir: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        msg = (
            f"{type(e).__name__}: {e}. This is a bug in quantir, not in your input; "
            "rerun with QUANTIR_TRACEBACK=1 to see the traceback and please report it."
        )
        print(_paragraph("quantir: internal error: ", msg), file=sys.stderr)
        return EXIT_INTERNAL


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    worker = None
    if argv[:1] == ["convert"]:  # the crash probe's child starts first: its imports overlap the conversion
        from quantir.backends.probe import ProbeWorker

        worker = ProbeWorker()
        worker.start()
    try:
        parser = _build_parser()
        args = parser.parse_args(argv)
        args.probe_worker = worker
        return _run(args.func, args)
    finally:
        if worker is not None:
            worker.close()


if __name__ == "__main__":
    sys.exit(main())
