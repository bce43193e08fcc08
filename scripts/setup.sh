#!/usr/bin/env bash
# Set up everything orchd and its tests need on a fresh Debian machine:
# system packages (bubblewrap + socat for claude's sandbox, git, systemd-analyze,
# promtool), the Python package with its test extra in a virtual environment
# (.venv in the repository: works where the system Python refuses pip, PEP 668),
# and the three agent CLIs at the pinned versions.
# Idempotent; run as root (or with sudo available) for the apt step.
# Afterwards: .venv/bin/orchd, .venv/bin/orchctl, .venv/bin/python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"

need=()
for pkg in bubblewrap socat git systemd chromium iproute2 util-linux; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [[ ! -x "$VENV/bin/python" ]] && ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
  need+=(python3-venv)  # Debian's python3 has no venv/ensurepip without it
fi
need_promtool=0
command -v promtool >/dev/null 2>&1 || need_promtool=1  # Debian ships promtool in the prometheus package
if ((${#need[@]} || need_promtool)); then
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  if ((${#need[@]})); then
    echo "setup: installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  if ((need_promtool)); then
    echo "setup: installing prometheus (for promtool)" >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # only the tool is wanted: a Prometheus server the package may have started is stopped again
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
      $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
  fi
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup: creating $VENV" >&2
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import orchd, zmq, msgspec, pydantic, prometheus_client, hypothesis, pytest, pytest_timeout, setuptools
assert tuple(map(int, setuptools.__version__.split('.')[:2])) >= (70, 1)" 2>/dev/null \
   || ! "$PY" -m pip show -q orchd >/dev/null 2>&1; then
  "$PY" -m pip install -q --disable-pip-version-check -e ".[test]" >&2
fi
"$PY" -c "import orchd, zmq, msgspec, pydantic, prometheus_client, hypothesis"

bash scripts/install-agents.sh >/dev/null
echo "setup: done (Python in $VENV, agent CLIs in $ROOT/.tools/agents/node_modules/.bin)" >&2
