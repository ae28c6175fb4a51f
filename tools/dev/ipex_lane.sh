#!/usr/bin/env bash
# The opt-in IPEX lane (issue 12): real IPEX 2.8 loads quantir's qconf.json into the user's own model.
#
# IPEX 2.8 is the last CPU release and imports only with torch 2.8 (PyPI's torch 2.8.0 is the CUDA build, ~7 GB
# with its nvidia wheels), so the lane builds its own venv. Step 1 writes the artifacts with this checkout's venv
# (torch 2.13); step 2 runs tests/e2e/test_ipex_lane.py (marker `ipex`) in the IPEX venv.
#
#   bash tools/dev/ipex_lane.sh [VENV_DIR]     (default /tmp/quantir-ipex-lane)
set -euo pipefail
cd "$(dirname "$0")/../.."
LANE="${1:-/tmp/quantir-ipex-lane}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
python -m quantir.tools.dev.ipex_lane write "$WORK"
if [ ! -x "$LANE/bin/python" ]; then
  python3 -m venv "$LANE"
  "$LANE/bin/python" -m pip install -q torch==2.8.0 intel-extension-for-pytorch==2.8.0 pytest numpy onnx scikit-learn lark
fi
"$LANE/bin/python" -m pip install -q --no-deps -e . --config-settings editable_mode=strict
QUANTIR_IPEX_ARTIFACTS="$WORK" "$LANE/bin/python" -m pytest -q -s -p no:cacheprovider -m ipex tests/e2e/test_ipex_lane.py
