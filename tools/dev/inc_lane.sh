#!/usr/bin/env bash
# The opt-in INC lane (issue 13): real Intel Neural Compressor (neural-compressor-pt 3.10) loads quantir's Gaudi FP8
# checkpoint into the user's own digits CNN with `neural_compressor.torch.quantization.load(..., device="cpu")`.
#
# INC pulls torchao, pydantic, accelerate and transformers; the lane keeps them out of the main venv. Step 1 writes
# the checkpoints with this checkout's venv; step 2 runs tests/e2e/test_inc_lane.py (marker `inc`) in the INC venv.
#
#   bash tools/dev/inc_lane.sh [VENV_DIR]     (default /tmp/quantir-inc-lane)
set -euo pipefail
cd "$(dirname "$0")/../.."
LANE="${1:-/tmp/quantir-inc-lane}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
python -m quantir.tools.dev.inc_lane write "$WORK"
if [ ! -x "$LANE/bin/python" ]; then
  python3 -m venv "$LANE"
  "$LANE/bin/python" -m pip install -q torch==2.13.0 neural-compressor-pt==3.10 safetensors accelerate transformers \
    pytest numpy onnx onnxruntime scikit-learn lark
fi
"$LANE/bin/python" -m pip install -q --no-deps -e . --config-settings editable_mode=strict
QUANTIR_INC_ARTIFACTS="$WORK" "$LANE/bin/python" -m pytest -q -s -p no:cacheprovider -m inc tests/e2e/test_inc_lane.py
