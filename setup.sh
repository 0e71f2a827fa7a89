#!/usr/bin/env bash
# Set up latentloop on a fresh machine: the pinned CPU torch first (an unpinned torch would pull a
# multi-GB CUDA build), then the package with its development tools.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet torch==2.13.0
fi
"$PY" -m pip install --quiet -e ".[dev]"
