#!/usr/bin/env bash
# The main job, end to end: set up, start orchd, and run a whole session with
# the three REAL agent CLIs (gemini designs, claude implements, codex reviews)
# against the built-in scripted model server, so it spends no tokens. Each
# assignment runs in its own git worktree; the results are merged into branch
# orchd/<session> of a throwaway target repository.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export VIRTUAL_ENV="$ROOT/.venv"  # python3 below is the venv's (setup.sh installed orchd there)
export PATH="$ROOT/.venv/bin:$ROOT/.tools/agents/node_modules/.bin:$PATH"

WORK="$(mktemp -d /tmp/orchd-demo.XXXXXX)"
export ORCHD_RUNTIME_DIR="$WORK/rt" ORCHD_STATE_DIR="$WORK/state"
python3 -m orchd.app run >"$WORK/orchd.log" 2>&1 &
DAEMON=$!
trap 'kill -TERM $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null || true' EXIT
for _ in $(seq 100); do python3 -m orchctl.cli status >/dev/null 2>&1 && break; sleep 0.1; done

REPO="$WORK/target"
git init -q -b main "$REPO"
echo "# demo target" >"$REPO/README.md"
git -C "$REPO" add -A
git -C "$REPO" -c user.name=demo -c user.email=demo@localhost commit -qm "initial commit"

SESSION=$(python3 -m orchctl.cli submit "Add a greeting module with tests" --target "$REPO" --rehearse --json \
          | python3 -c 'import json,sys; print(json.load(sys.stdin)["session"])')
echo "== session $SESSION: live events"
python3 -m orchctl.cli watch "$SESSION" --until-done
echo "== status"
python3 -m orchctl.cli status "$SESSION"
echo "== files on branch orchd/$SESSION"
git -C "$REPO" ls-tree --name-only "orchd/$SESSION"
echo "== the target's own branch is unchanged:"
git -C "$REPO" log --oneline main
state=$(python3 -m orchctl.cli status "$SESSION" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
echo "demo: session $SESSION ended $state (work dir $WORK)"
[[ "$state" == "done" ]]
