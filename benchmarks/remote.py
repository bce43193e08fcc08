#!/usr/bin/env python3
"""A remote worker (on an agent host) against a local one, in one run: event throughput and latency.

    python benchmarks/remote.py [--lines 50000] [--paced 3000] [--repeat 3]

One daemon (the supervisor) with a CURVE host link on loopback (``tcp://127.0.0.1``, the same
encryption and authentication as between machines) and ``[placement] local_slots = 0``; one
``orchd host`` with one slot.  Each round runs the same ``command`` assignment twice: locally
(while no host is connected, placement keeps it here) and remotely (the host connected, it goes
there).  Measured by a SUB on the daemon's events socket, as in ``benchmarks/pipeline.py``:

* flood: N JSON lines printed flat out; lines/s from the first to the last agent.output received;
* paced: lines at 1,000/s, each carrying ``time.time_ns()`` at write; p50/p99/max latency in us
  from the agent's write to the SUB's receipt (first 100 dropped).

All lines must arrive with contiguous seqs.  Ends with one JSON line.  One machine measures the
link's own cost (CURVE, the extra hop, the acknowledgements), not a network's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.pipeline import ROOT, Daemon, run_daemon  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _orchd(*args: str, env: dict) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "orchd.app", *args], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=60)
    if res.returncode != 0:
        raise SystemExit(f"orchd {' '.join(args)}: {res.stderr}")
    return res


def _hosts(d: Daemon) -> list[dict]:
    res = d.ctl("hosts", "--json")
    return json.loads(res.stdout)["hosts"] if res.returncode == 0 else []


def _wait(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


class Host:
    def __init__(self, tmp: Path, endpoint: str, server_key: str, env: dict) -> None:
        self.log = open(tmp / "host.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchd.app", "host", "--connect", endpoint, "--server-key", server_key,
             "--client-key", str(tmp / "host.key_secret"), "--slots", "1", "--name", "bench-host",
             "--state-dir", str(tmp / "hoststate"), "--heartbeat-s", "0.2"],
            env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=50_000)
    ap.add_argument("--paced", type=int, default=3_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tmp-base", default="/tmp")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="or", dir=args.tmp_base))
    env = {k: v for k, v in os.environ.items() if k != "ORCHD_RUNTIME_DIR"}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    server_key = json.loads(_orchd("keys", "init", "--state-dir", str(tmp / "state"), "--json", env=env).stdout)
    from orchd import keys
    client = keys.new_client_keys(tmp / "host.key_secret")
    _orchd("keys", "add", "--state-dir", str(tmp / "state"), "--", "bench-host", client.public.decode(), env=env)
    saved = dict(os.environ)
    os.environ.update(ORCHD_HOST_LINK_ENDPOINT=endpoint, ORCHD_PLACEMENT__LOCAL_SLOTS="0",
                      ORCHD_PLACEMENT__HEARTBEAT_S="0.2", ORCHD_PLACEMENT__HOST_TIMEOUT_S="1",
                      ORCHD_HTTP_LISTEN="off")
    ctx = zmq.Context()
    d = host = None
    runs: dict[str, list[dict]] = {k: [] for k in ("local", "remote", "local_paced", "remote_paced")}
    try:
        d = Daemon(tmp, None)  # reads the ORCHD_* settings above from its environment
        os.environ.clear()
        os.environ.update(saved)
        run_daemon(ctx, d, 1000, False)  # warm-up
        for r in range(args.repeat):
            _wait(lambda: not _hosts(d), 30, "no host to be connected")
            for key, fn in (("local", lambda: run_daemon(ctx, d, args.lines, False)),
                            ("local_paced", lambda: run_daemon(ctx, d, args.paced, True))):
                runs[key].append(fn())
            host = Host(tmp, endpoint, server_key["public_key"], env)
            _wait(lambda: _hosts(d), 60, "the host to connect")
            busy = lambda: _hosts(d) and _hosts(d)[0]["busy"] == 0  # noqa: E731
            for key, fn in (("remote", lambda: run_daemon(ctx, d, args.lines, False)),
                            ("remote_paced", lambda: run_daemon(ctx, d, args.paced, True))):
                _wait(busy, 30, "the host's slot to be free")
                runs[key].append(fn())
                placed_remote = "bench-host" in _last_launch_host(d)
                if not placed_remote:
                    raise SystemExit("the remote run did not run on the host")
            host.stop()
            host = None
            for key in runs:
                res = runs[key][-1]
                print(f"[{r + 1}/{args.repeat}] {key:13s} " + " ".join(
                    f"{k}={v:,.0f}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()), flush=True)
    finally:
        if host is not None:
            host.stop()
        if d is not None:
            d.stop()
        ctx.destroy(linger=0)
        shutil.rmtree(tmp, ignore_errors=True)

    def med(key: str, field: str) -> float:
        vals = [r[field] for r in runs[key] if field in r]
        return statistics.median(vals) if vals else float("nan")

    lost = sum(r["missing"] for rs in runs.values() for r in rs)
    gaps = sum(r.get("seq_gaps", 0) for rs in runs.values() for r in rs)
    loc, rem = med("local", "rate"), med("remote", "rate")
    print(f"\nmedians of {args.repeat} (flood {args.lines:,} lines, paced {args.paced:,} at 1,000/s):")
    print(f"  {'':20s}{'local':>12s}{'remote':>12s}{'remote/local':>14s}")
    print(f"  {'lines/s':20s}{loc:>12,.0f}{rem:>12,.0f}{rem / loc:>14.2f}")
    for q in ("p50", "p99", "max"):
        a, b = med("local_paced", q), med("remote_paced", q)
        print(f"  {'latency ' + q + ' us':20s}{a:>12,.0f}{b:>12,.0f}{b / a:>14.1f}")
    print(f"  missing lines: {lost}, seq gaps: {gaps}")
    print(json.dumps({"local_lines_per_s": round(loc), "remote_lines_per_s": round(rem),
                      "throughput_ratio": round(rem / loc, 3),
                      "local_p50_us": round(med("local_paced", "p50")), "remote_p50_us": round(med("remote_paced", "p50")),
                      "local_p99_us": round(med("local_paced", "p99")), "remote_p99_us": round(med("remote_paced", "p99")),
                      "lost": lost, "seq_gaps": gaps}))
    return 1 if lost or gaps else 0


def _last_launch_host(d: Daemon) -> str:
    """The host of the newest session's launch (from its log, via ``orchctl watch``)."""
    res = d.ctl("status", "--json")
    sessions = json.loads(res.stdout).get("sessions", [])
    sid = sorted(sessions, key=lambda s: s.get("created_ts", 0))[-1]["id"] if sessions else ""
    out = d.ctl("watch", sid, "--json", "--until-done").stdout.decode()
    return " ".join(json.dumps(e.get("host")) for e in map(json.loads, out.splitlines())
                    if e.get("kind") == "worker.launching")


if __name__ == "__main__":
    sys.exit(main())
