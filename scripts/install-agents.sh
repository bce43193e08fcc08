#!/usr/bin/env bash
# Install the three agent CLIs at the pinned versions into .tools/agents.
# Idempotent: does nothing when the pinned versions are already installed.
# Prints the bin directory on the last line of stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="$ROOT/.tools/agents"
BIN="$PREFIX/node_modules/.bin"

# The pins the adapters and tests/fixtures/agents were recorded against; bump
# them together (re-run tests/fixtures/record.py).
PINS=(
  "@anthropic-ai/claude-code@2.1.197"
  "@openai/codex@0.169.0"
  "@google/gemini-cli@0.61.0"
)

installed_version() {  # $1 = package name; prints its installed version or nothing
  local pkg_json="$PREFIX/node_modules/$1/package.json"
  [[ -f "$pkg_json" ]] && node -p "require('$pkg_json').version" 2>/dev/null || true
}

need_install=0
for pin in "${PINS[@]}"; do
  name="${pin%@*}" want="${pin##*@}"
  have="$(installed_version "$name")"
  if [[ "$have" != "$want" ]]; then
    echo "install-agents: $name is '${have:-absent}', want $want" >&2
    need_install=1
  fi
done

if (( need_install )); then
  mkdir -p "$PREFIX"
  npm install --prefix "$PREFIX" --no-audit --no-fund "${PINS[@]}" >&2
else
  echo "install-agents: pinned versions already installed" >&2
fi

# claude's package ships a native binary in an optional dependency; npm may skip
# the postinstall that would normally wire it up. If the .bin shim does not run,
# point `claude` at the native binary directly.
if ! "$BIN/claude" --version >/dev/null 2>&1; then
  real=""
  for cand in \
      "$PREFIX/node_modules/@anthropic-ai/claude-code/bin/claude.exe" \
      "$PREFIX"/node_modules/@anthropic-ai/claude-code-linux-*/claude \
      "$PREFIX"/node_modules/@anthropic-ai/claude-code-linux-*/bin/claude; do
    if [[ -x "$cand" ]] && "$cand" --version >/dev/null 2>&1; then real="$cand"; break; fi
  done
  if [[ -z "$real" ]]; then
    echo "install-agents: no working claude binary found" >&2
    exit 1
  fi
  ln -sfr "$real" "$BIN/claude"  # relative, so the prefix can move
  echo "install-agents: linked $BIN/claude -> $real" >&2
fi

for tool in claude codex gemini; do
  printf 'install-agents: %-7s %s\n' "$tool" "$("$BIN/$tool" --version 2>&1 | head -n1)" >&2
done
echo "$BIN"
