#!/usr/bin/env bash
# Set up if needed, then run the main job on its defaults (extra args are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/secptune tune "$@"
