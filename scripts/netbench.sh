#!/usr/bin/env bash
# `secptune bench net`: secure forward and one tuning generation over emulated networks (none / LAN / WAN),
# measured vs the cost model.  Needs root (network namespaces); see docs/deployment.md.
#   bash scripts/netbench.sh [--settings none,LAN,WAN,WAN-200] [--limit 4] [--popsize 4] [--out results.jsonl]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
exec .venv/bin/secptune bench net "$@"
