"""A synthetic model with over 2 GB of external weights imports, dumps to text IR and re-emits to ONNX
without holding the weights in memory: peak RSS is measured in a fresh process.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

N_WEIGHTS = 9
ROWS, COLS = 16384, 4096  # 256 MiB of float32 each: 2.25 GiB in all
CHUNK_ROWS = 1024


def _write_model(folder: Path) -> Path:
    """Stream the weights to one external-data file and write a small proto that points into it."""
    data = folder / "weights.bin"
    initializers = []
    nodes = []
    offset = 0
    with open(data, "wb") as f:
        for i in range(N_WEIGHTS):
            for start in range(0, ROWS, CHUNK_ROWS):
                block = np.arange(start * COLS, (start + CHUNK_ROWS) * COLS, dtype=np.float32) * (i + 1) * 1e-7
                f.write(block.tobytes())
            length = ROWS * COLS * 4
            t = TensorProto(name=f"layer{i}.weight", data_type=TensorProto.FLOAT, dims=[ROWS, COLS])
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data.name), ("offset", str(offset)), ("length", str(length))):
                t.external_data.add(key=k, value=v)
            initializers.append(t)
            offset += length
            nodes.append(helper.make_node("Gather", [f"layer{i}.weight", "idx"], [f"g{i}"], axis=0))
    acc = "g0"
    for i in range(1, N_WEIGHTS):
        nodes.append(helper.make_node("Add", [acc, f"g{i}"], [f"s{i}"]))
        acc = f"s{i}"
    graph = helper.make_graph(
        nodes,
        "large",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info(acc, TensorProto.FLOAT, [2, COLS])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "large.onnx"
    path.write_bytes(model.SerializeToString())
    return path


_CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    from quantir.frontends.onnx import import_onnx
    from quantir.backends.onnx_proto import save_model
    from quantir.ir import textio

    src, out_onnx, out_qir = sys.argv[1:4]
    t0 = time.perf_counter()
    graph = import_onnx(src)
    t1 = time.perf_counter()
    save_model(graph, out_onnx, external_data=True)
    t2 = time.perf_counter()
    textio.save(graph, out_qir)
    t3 = time.perf_counter()
    # VmHWM is this address space's peak; ru_maxrss on Linux keeps the forking parent's (pytest's) peak across exec.
    status = open("/proc/self/status").read().split("VmHWM:")
    if len(status) > 1:
        peak_mb = int(status[1].split()[0]) / 1024
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak_mb, "import_s": t1 - t0, "emit_s": t2 - t1, "dump_s": t3 - t2}))
    """
)


def _digest_of_initializers(model_path: Path) -> dict[str, str]:
    """sha256 of every initializer's bytes, streamed from its external file."""
    model = onnx.load(str(model_path), load_external_data=False)
    digests = {}
    for t in model.graph.initializer:
        info = {e.key: e.value for e in t.external_data}
        h = hashlib.sha256()
        with open(model_path.parent / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            left = int(info["length"])
            while left:
                block = f.read(min(left, 64 << 20))
                h.update(block)
                left -= len(block)
        digests[t.name] = h.hexdigest()
    return digests


@pytest.mark.slow
def test_two_gigabyte_model_streams_through_import_and_emission(tmp_path: Path) -> None:
    src = _write_model(tmp_path)
    total = sum((tmp_path / "weights.bin").stat().st_size for _ in [0])
    assert total >= 2 * 1024**3
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out_onnx, out_qir = out_dir / "large.onnx", out_dir / "large.qir"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(src), str(out_onnx), str(out_qir)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nlarge model: {total / 1024**3:.2f} GiB of weights; {stats}")
    # The weights are 2.25 GiB; a process that held even one layer twice would exceed this bound.
    assert stats["peak_rss_mb"] < 700, stats

    assert out_onnx.stat().st_size < 1 << 20, "the emitted proto must keep weights external"
    assert _digest_of_initializers(out_onnx) == _digest_of_initializers(src)
    sidecar = out_qir.with_suffix(".safetensors")
    assert sidecar.stat().st_size >= total
