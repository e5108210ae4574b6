#!/usr/bin/env bash
# Create .venv in the checkout when it is missing (or when pyproject.toml changed) and install the project
# with its demo, dev and bench extras. torch is pinned to the CPU build for dev/CI; set TORCH_SPEC to
# choose another build (GPU users: TORCH_SPEC=torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.lingua-edit-installed
want=$(cat pyproject.toml clients/python/pyproject.toml | sha256sum | cut -d" " -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e '.[demo,dev,bench]' -e clients/python
echo "$want" > "$stamp"
echo "bootstrap: .venv ready" >&2
