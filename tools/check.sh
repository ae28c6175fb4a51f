#!/usr/bin/env bash
# Lint, type-check and test an installed quantir checkout. Exit non-zero on any real failure.
set -uo pipefail
cd "$(dirname "$0")/.."

status=0
echo "== ruff"
ruff check . || status=1
echo "== mypy"
ROOT="$PWD"
(cd /tmp && mypy --config-file "$ROOT/pyproject.toml" -p quantir.ir -p quantir.compiler -p quantir.frontends -p quantir.backends -p quantir.tools) || status=1
echo "== pytest"
python -m pytest -q -p no:cacheprovider "$@"
rc=$?
case $rc in
  0) ;;
  5) echo "pytest collected no tests: treating as a failure"; status=1 ;;
  *) echo "pytest failed with exit code $rc"; status=1 ;;
esac
exit $status
