#!/usr/bin/env bash
# Set up everything orchd and its tests need on a fresh Debian machine:
# system packages (bubblewrap + socat for claude's sandbox, git), the Python
# package with its test extra, and the three agent CLIs at the pinned versions.
# Idempotent; run as root (or with sudo available) for the apt step.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

need=()
for pkg in bubblewrap socat git systemd chromium; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  echo "setup: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

python3 -m pip install -q -e ".[test]" 2>&1 | grep -v "Running pip as the 'root' user" >&2 || true
python3 -c "import orchd, zmq, msgspec, pydantic, prometheus_client, hypothesis" 

bash scripts/install-agents.sh >/dev/null
echo "setup: done (agent CLIs in $ROOT/.tools/agents/node_modules/.bin)" >&2
