#!/usr/bin/env python3
"""Per-assignment cost on a big repository: plans of ``sleep 1`` assignments through a real daemon.

    python benchmarks/workspace.py [--files 50000] [--chain 3] [--parallel 3] [--repeat 3] [--packed]
    python benchmarks/workspace.py --tiny [--chain 10] [--repeat 3]

Generates a repository of ``--files`` small files in 500 directories (one
commit; ~200 MB checked out at 50,000 files; ``--packed`` runs ``git gc``
first, as a long-lived repository would be), starts one real ``orchd run``
and, each repeat:

* **raw_worktree_s**: the baseline, measured in the same run: one plain
  ``git worktree add --detach`` of the repository (then removed again);
* a **chained plan**: ``--chain`` ``command`` assignments, each ``after`` the
  one before, each running ``sleep 1``.  From the daemon's events (stamped on
  the daemon's ``ts``, read by a SUB here):

  - **first_launch_s**: ``session.submitted`` -> the first ``worker.started``;
  - **per_assignment_overhead_s**: median of ``worker.exited`` of one ->
    ``worker.started`` of the next;
  - **merge_s**: the last ``worker.exited`` -> ``session.merged``;
  - **chain_s**: ``session.submitted`` -> ``session.merged``, and its ratio
    to ``chain x 1 s + raw_worktree_s`` (the issue's target: <= 1.5);
  - **chain_disk_mb**: the session's worktree directory after the merge, before
    ``orchctl clean`` (du);

* a **parallel plan** of ``--parallel`` such assignments side by side:
  **disk_per_assignment_mb** is the session's worktree directory (du, real
  blocks) after the merge, before ``orchctl clean``, divided by their number
  (every clone is still there then);
  **parallel_first_launch_s** / **parallel_last_launch_s** and
  **parallel_merge_s** as above.

``--tiny`` uses a one-file repository and a chain of 10 (unless ``--chain``
says otherwise) and reports **tiny_ratio**: ``session.submitted`` ->
``session.merged`` over the critical path (``chain x 1 s``; target <= 1.03).

``--trace`` runs the daemon with ``GIT_TRACE2_EVENT`` and prints, for each
gap of each chained plan, where it went: ``worker.exited`` -> the next
``worker.launching`` (the supervisor, the commit of the one before and the
new working copy, with every git command the daemon ran in that window and
its duration) -> ``worker.started`` (the worker actor and the spawn), and
the medians over all gaps as **gap_*** keys; then the merge's git commands
(``worker.exited`` of the last -> ``session.merged``), counted as
**merge_git_commands**.

Each repeat is printed; the last line is one JSON object of the medians.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clone_cost import git, make_repo  # noqa: E402  (same directory)
from pipeline import Daemon, new_sub  # noqa: E402

SLEEP_S = 1.0


def du_mb(path: Path) -> float:
    """Disk used under ``path`` (real blocks, hard links once), in MB."""
    r = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True)
    return int(r.stdout.split()[0]) / 1024 if r.returncode == 0 and r.stdout else 0.0


def raw_worktree(repo: Path, dest: Path) -> float:
    t0 = time.perf_counter()
    git(repo, "worktree", "add", "-q", "--detach", str(dest), "HEAD")
    took = time.perf_counter() - t0
    git(repo, "worktree", "remove", "--force", str(dest))
    return took


def run_plan(ctx: zmq.Context, d: Daemon, repo: Path, assignments: list[dict]) -> dict:
    """Submit a plan, follow its events to ``session.merged`` (or an end), return the receipt times."""
    sub = new_sub(ctx, d.events)
    time.sleep(0.3)  # the subscription reaches the PUB first
    d.plans += 1
    plan = d.tmp / f"plan{d.plans}.json"
    plan.write_text(json.dumps({"assignments": assignments}))
    res = d.ctl("submit", "--plan", str(plan), "--target", str(repo), "--json")
    if res.returncode != 0:
        raise SystemExit(f"submit failed: {res.stderr.decode()}")
    session = json.loads(res.stdout)["session"]
    sdir = d.tmp / "state" / "worktrees" / session
    topic = session.encode()
    t: dict = {"started": {}, "exited": {}, "launching": {}}
    deadline = time.monotonic() + 600
    try:
        while "merged" not in t and time.monotonic() < deadline:
            if not sub.poll(100):
                continue
            f = sub.recv()
            top, kind, body = f.split(b" ", 2)
            if top != topic:
                continue
            ev = json.loads(body)
            now = ev["ts"]  # the daemon's own stamp (wall clock) at the event
            worker = ev.get("worker")
            if kind == b"session.submitted":
                t["submitted"] = now
            elif kind == b"worker.launching":
                t["launching"][worker] = now
            elif kind == b"worker.started":
                t["started"][worker] = now
            elif kind == b"worker.exited":
                t["exited"][worker] = now
                if ev.get("state") != "done":
                    raise SystemExit(f"{worker} ended {ev.get('state')}: {ev.get('reason')}")
            elif kind == b"session.merged":
                t["merged"] = now
            elif kind == b"session.state" and ev.get("state") in ("failed", "stopped", "escalated"):
                raise SystemExit(f"session {session} ended {ev['state']}: {ev.get('reason')}")
    finally:
        sub.close()
    if "merged" not in t:
        raise SystemExit(f"session {session} did not merge in time")
    t["after_mb"] = du_mb(sdir)
    d.ctl("clean", session)
    return t


def sleepers(n: int, chained: bool) -> list[dict]:
    return [{"name": f"a{i}", "agent": "command", "argv": ["sleep", f"{SLEEP_S:g}"],
             **({"after": [f"a{i - 1}"]} if chained and i else {})} for i in range(n)]


def chained_figures(t: dict, n: int) -> dict:
    names = [f"a{i}" for i in range(n)]
    gaps = [t["started"][names[i + 1]] - t["exited"][names[i]] for i in range(n - 1)]
    total = t["merged"] - t["submitted"]
    return {"first_launch_s": t["started"][names[0]] - t["submitted"],
            "per_assignment_overhead_s": statistics.median(gaps) if gaps else 0.0,
            "merge_s": t["merged"] - max(t["exited"].values()),
            "chain_s": total, "chain_disk_mb": t["after_mb"]}


def git_commands(trace: Path) -> list[tuple[float, float, str]]:
    """``(start, seconds, command)`` of each top-level git process in a ``GIT_TRACE2_EVENT`` file."""
    starts: dict[str, tuple[float, str]] = {}
    out = []
    try:
        lines = trace.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        sid = ev.get("sid", "")
        if "/" in sid:
            continue  # a git process started by another one: counted in its parent
        if ev.get("event") == "start":
            at = datetime.datetime.fromisoformat(ev["time"].replace("Z", "+00:00")).timestamp()
            argv = ev.get("argv", [])[1:]
            while argv[:1] in (["-c"], ["-C"]):  # orchd's settings and directory: not the command
                argv = argv[2:]
            starts[sid] = (at, " ".join(argv)[:60])
        elif ev.get("event") == "exit" and sid in starts:
            at, cmd = starts.pop(sid)
            out.append((at, float(ev.get("t_abs", 0.0)), cmd))
    return sorted(out)


def gap_breakdown(t: dict, n: int, trace: Path) -> dict:
    """Print each gap of a chain (exited -> launching -> started, the git commands between); medians."""
    names = [f"a{i}" for i in range(n)]
    cmds = git_commands(trace)
    first = [(at, took, c) for at, took, c in cmds if t["submitted"] <= at <= t["launching"][names[0]]]
    print(f"  first launch: submitted -> launching {(t['launching'][names[0]] - t['submitted']) * 1000:.1f} ms, "
          f"launching -> started {(t['started'][names[0]] - t['launching'][names[0]]) * 1000:.1f} ms; git: "
          + ", ".join(f"+{(at - t['submitted']) * 1000:.1f} {c} {took * 1000:.1f}" for at, took, c in first),
          flush=True)
    rows = []
    for prev, nxt in zip(names, names[1:]):
        exited, launching, started = t["exited"][prev], t["launching"][nxt], t["started"][nxt]
        inside = [(at, took, c) for at, took, c in cmds if exited <= at <= launching]
        rows.append({"gap_to_launching_ms": (launching - exited) * 1000,
                     "gap_launching_to_started_ms": (started - launching) * 1000,
                     "gap_git_ms": sum(took for _, took, _ in inside) * 1000,
                     "gap_git_commands": len(inside)})
        print(f"  {prev} -> {nxt}: exited -> launching {rows[-1]['gap_to_launching_ms']:.1f} ms, "
              f"launching -> started {rows[-1]['gap_launching_to_started_ms']:.1f} ms; git "
              f"{rows[-1]['gap_git_ms']:.1f} ms in {len(inside)}: "
              + ", ".join(f"+{(at - exited) * 1000:.1f} {c} {took * 1000:.1f}" for at, took, c in inside), flush=True)
    last = max(t["exited"].values())
    merge = [(at, took, c) for at, took, c in cmds if last <= at <= t["merged"]]
    print(f"  merge: last exited -> merged {(t['merged'] - last) * 1000:.1f} ms; git "
          f"{sum(took for _, took, _ in merge) * 1000:.1f} ms in {len(merge)}: "
          + ", ".join(f"+{(at - last) * 1000:.1f} {c} {took * 1000:.1f}" for at, took, c in merge), flush=True)
    out = {k: statistics.median(r[k] for r in rows) for k in rows[0]} if rows else {}
    return {**out, "merge_git_commands": len(merge)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=50_000)
    ap.add_argument("--chain", type=int, default=None, help="chained assignments (default 3; 10 with --tiny)")
    ap.add_argument("--parallel", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--packed", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="a one-file repository, a chain of 10, no parallel plan")
    ap.add_argument("--tmp-base", default=None, help="where the repository, state and sockets go")
    ap.add_argument("--trace", action="store_true", help="where each gap of a chain goes (git trace2, events)")
    args = ap.parse_args()
    chain = args.chain or (10 if args.tiny else 3)
    files = 1 if args.tiny else args.files
    tmp = Path(tempfile.mkdtemp(prefix="orchd-ws-", dir=args.tmp_base))
    ctx = zmq.Context()
    d = None
    try:
        repo = tmp / "big"
        t0 = time.perf_counter()
        make_repo(repo, files, args.packed)
        print(f"repository: {files} files{' (packed)' if args.packed else ''}, {du_mb(repo):.0f} MB, "
              f"made in {time.perf_counter() - t0:.1f}s", flush=True)
        trace = tmp / "git-trace2.json"
        if args.trace:
            os.environ["GIT_TRACE2_EVENT"] = str(trace)  # the daemon's git commands (ours took ENV earlier)
        try:
            d = Daemon(tmp, None)
        finally:
            os.environ.pop("GIT_TRACE2_EVENT", None)
        rows: list[dict] = []
        for i in range(args.repeat):
            row: dict = {"raw_worktree_s": raw_worktree(repo, tmp / f"raw-{i}")}
            t = run_plan(ctx, d, repo, sleepers(chain, True))
            row.update(chained_figures(t, chain))
            if args.trace:
                row.update(gap_breakdown(t, chain, trace))
            critical = chain * SLEEP_S
            if args.tiny:
                row["tiny_ratio"] = row["chain_s"] / critical
            else:
                row["chain_vs_target"] = row["chain_s"] / (critical + row["raw_worktree_s"])
                t = run_plan(ctx, d, repo, sleepers(args.parallel, False))
                first = min(t["started"].values())
                row.update(disk_per_assignment_mb=t["after_mb"] / args.parallel,
                           parallel_first_launch_s=first - t["submitted"],
                           parallel_last_launch_s=max(t["started"].values()) - t["submitted"],
                           parallel_merge_s=t["merged"] - max(t["exited"].values()))
                row["first_launch_vs_raw"] = row["first_launch_s"] / row["raw_worktree_s"]
            rows.append(row)
            print(f"run {i + 1}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
        med = {k: round(statistics.median(r[k] for r in rows), 4) for k in rows[0]}
        med.update(files=files, chain=chain, repeat=args.repeat, packed=args.packed)
        if not args.tiny:
            med["parallel"] = args.parallel
        print(json.dumps(med))
    finally:
        if d is not None:
            d.stop()
        ctx.term()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
