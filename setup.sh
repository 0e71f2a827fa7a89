#!/usr/bin/env bash
# Set up latentloop on a fresh machine: the pinned CPU torch first (an unpinned torch would pull a
# multi-GB CUDA build), then the package with everything the test suite needs: the development tools
# (dev, with the openai client the server tests drive), lm-evaluation-harness for the harness adapter tests
# (eval, ~2.5 min), peft for LoRA (lora), fastapi, uvicorn and prometheus-client for `latentloop serve`
# (serve) and transformers 5 for the native transformers integration, latentloop.hf (hf).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet torch==2.13.0
fi
"$PY" -m pip install --quiet -e ".[dev,eval,lora,serve,hf]"
