#!/usr/bin/env python3
"""A daemon's RSS as its history grows: sessions run to their end, then a restart over that log.

    python benchmarks/history_rss.py [--rounds 8] [--sessions 20] [--assignments 5] [--settle-s 2.5]

One real ``orchd run`` (state on tmpfs).  Each round submits ``--sessions`` sessions of
``--assignments`` parallel ``command`` assignments (``sh`` printing five lines), waits until every
one has ended, waits ``--settle-s`` and reads the daemon's ``VmRSS``.  The baseline, in the same
run: the same daemon's RSS before its first session.  Then the daemon is stopped and started again
on the same state dir, so that it replays the whole log, and its RSS is read once it answers and
``--settle-s`` later.

Figures: ``rss_idle_mb`` (before any session), ``rss_after_mb`` (after the last round),
``kb_per_session`` (the growth over the rounds after the first, per session: the first round also
pays for code and caches used once), ``rss_restarted_mb`` (after the restart) and
``restart_over_idle`` (that over ``rss_idle_mb``).  Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from idle_rss import rss_mb  # noqa: E402  (same directory)
from pipeline import Daemon, new_sub  # noqa: E402

ENDED = ("done", "failed", "stopped", "escalated")


def run_round(d: Daemon, sub: zmq.Socket, tmp: Path, r: int, sessions: int, assignments: int) -> None:
    ids = set()
    for s in range(sessions):
        plan = tmp / f"plan-{r}-{s}.json"
        plan.write_text(json.dumps({"assignments": [
            {"name": f"a{i}", "agent": "command", "argv": ["sh", "-c", "for i in 1 2 3 4 5; do echo line $i; done"]}
            for i in range(assignments)]}))
        res = d.ctl("submit", "--plan", str(plan), "--target", str(d.repo), "--json")
        if res.returncode != 0:
            raise SystemExit(f"submit failed: {res.stderr.decode()}")
        ids.add(json.loads(res.stdout)["session"].encode())
    ended: set[bytes] = set()
    deadline = time.monotonic() + 300
    while not ids <= ended:
        if time.monotonic() > deadline:
            raise SystemExit(f"round {r}: {len(ids - ended)} sessions did not end in 300 s")
        if sub.poll(500):
            session, kind, body = sub.recv().split(b" ", 2)
            if kind == b"session.state" and json.loads(body)["state"] in ENDED:
                ended.add(session)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--sessions", type=int, default=20, help="sessions per round")
    ap.add_argument("--assignments", type=int, default=5, help="assignments per session")
    ap.add_argument("--settle-s", type=float, default=2.5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="oh", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    ctx = zmq.Context()
    try:
        d = Daemon(tmp, None)
        try:
            sub = new_sub(ctx, d.events)
            time.sleep(args.settle_s)  # the figure is "after this long idle": nothing to wait for but the clock
            idle = rss_mb(d.proc.pid)
            print(f"before any session   {idle:6.1f} MB", flush=True)
            after = []
            for r in range(args.rounds):
                run_round(d, sub, tmp, r, args.sessions, args.assignments)
                time.sleep(args.settle_s)  # as above: the RSS after the round has settled
                after.append(rss_mb(d.proc.pid))
                print(f"after round {r + 1:2d}       {after[-1]:6.1f} MB  ({(r + 1) * args.sessions} sessions)",
                      flush=True)
            sub.close()
        finally:
            d.stop()
        d = Daemon(tmp, None)  # the same state dir: the whole log is replayed at start
        try:
            time.sleep(args.settle_s)  # as above, once the restarted daemon answers
            restarted = rss_mb(d.proc.pid)
        finally:
            d.stop()
    finally:
        ctx.destroy(linger=0)
        shutil.rmtree(tmp, ignore_errors=True)
    per = (after[-1] - after[0]) * 1024 / max(1, (args.rounds - 1) * args.sessions)
    print(f"growth per session   {per:6.1f} KB  (rounds 2-{args.rounds}; {args.assignments} assignments each)")
    print(f"after a restart      {restarted:6.1f} MB  ({args.rounds * args.sessions} sessions in the log)")
    print(json.dumps({"rss_idle_mb": round(idle, 1), "rss_after_mb": round(after[-1], 1),
                      "kb_per_session": round(per, 1), "rss_restarted_mb": round(restarted, 1),
                      "restart_over_idle": round(restarted / idle, 2), "sessions": args.rounds * args.sessions,
                      "assignments": args.assignments}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
