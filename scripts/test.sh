#!/usr/bin/env bash
# Set up, then run the whole test suite (both tiers: fixtures and the real CLIs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# the venv first: python3, orchd and orchctl are the ones setup.sh installed
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$ROOT/.venv/bin:$ROOT/.tools/agents/node_modules/.bin:$PATH"
python3 -m pytest -q -p no:cacheprovider "$@"
