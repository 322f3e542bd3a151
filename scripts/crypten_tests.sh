#!/usr/bin/env bash
# CrypTen 0.4.1's own tests with secptune's CrypTen seam installed (tests/crypten_tests.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python tests/crypten_tests.py "$@"
