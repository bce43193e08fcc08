#!/usr/bin/env python3
"""Many agents at once: N ``command`` agents x R lines/s, through a real daemon.

    python benchmarks/scale.py [--agents 200] [--rate 10] [--seconds 60] [--sessions 20] [--repeat 3]
                               [--ping-ms 10]

One real ``orchd run``; ``--sessions`` sessions of ``--agents / --sessions``
parallel ``command`` assignments each; every agent prints ``--rate`` JSON lines
per second for ``--seconds`` seconds, each carrying ``time.time_ns()`` at write.
A SUB here (RCVHWM 0) stamps receipt.  Measured:

* ``lost``: agent lines that never reached the SUB (must be 0);
* ``p99_us``: line written -> event received, 99th percentile (first second dropped);
* ``steady_p99_us`` and ``steady_cpu_pct``: the same, only in the steady state, from one second
  after the last agent started until the first one exits (``steady_lines`` lines): the
  figures without the start of 200 processes and 20 sessions' working copies in them;
* ``daemon_cpu_pct``: the daemon's user+sys CPU from the first submit to the last session's
  end (``wall_s``; starting the agents included), % of one core.  On a loaded machine the
  submits take a while and dilute it, so ``daemon_cpu_us_per_line`` (the same CPU divided by
  the lines received) is the figure to compare between runs;
* ``rss_idle_mb``: the daemon's RSS before any session (the first run's); ``rss_per_agent_kb``:
  its peak RSS during a run minus at that run's start, per agent;
* ``ping_p99_us``: control ``Ping`` round trips (one every ``--ping-ms``, 10 ms) while the agents
  run, against ``raw_ping_p99_us``: a bare DEALER -> ROUTER echo over ipc in the same
  run (the baseline).  The pings are load too: 100 a second cost the daemon ~3-4% of a
  core here, so ``--ping-ms 1000`` measures the CPU of the agents' lines nearly alone;
* ``raw_p99_us``: the same lines published by one bare pyzmq PUB at the same total
  rate (the baseline for ``p99_us``).

Ends with one JSON line of the medians.  The children are this file run as
``_agent`` / ``_pub`` / ``_echo``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import Daemon, new_sub, pct  # noqa: E402  (same directory)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from orchd import protocol as p  # noqa: E402
from orchd import wire  # noqa: E402

SELF = str(Path(__file__).resolve())
PAD = "y" * 100


def child_agent(rate: float, seconds: float) -> None:
    out = sys.stdout.buffer
    n, period, start = int(rate * seconds), 1.0 / rate, time.monotonic()
    for i in range(n):
        delay = start + i * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        out.write(b'{"i":%d,"t":%d,"pad":"%s"}\n' % (i, time.time_ns(), PAD.encode()))
        out.flush()


def child_pub(endpoint: str, rate: float, seconds: float) -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.sndhwm = 0
    pub.bind(endpoint)
    pub.recv()
    n, period, start = int(rate * seconds), 1.0 / rate, time.monotonic()
    for i in range(n):
        delay = start + i * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        pub.send(b's agent.output {"t":%d,"pad":"%s"}' % (time.time_ns(), PAD.encode()))
    pub.send(b"s end")
    time.sleep(0.5)
    ctx.destroy(linger=1000)


def child_echo(endpoint: str) -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(endpoint)
    while True:
        frames = router.recv_multipart()
        if frames[-1] == b"quit":
            break
        router.send_multipart(frames)
    ctx.destroy(linger=0)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pinger(ctx: zmq.Context, endpoint: str, stop: threading.Event, out: list[float], raw: bool,
           every_s: float = 0.01) -> None:
    """A Ping every ``every_s`` until ``stop``; round trips in us into ``out``."""
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(endpoint)
    body = b"ping" if raw else wire.encode_request(p.Ping(), "b")
    try:
        while not stop.wait(every_s):
            t0 = time.perf_counter_ns()
            dealer.send(body)
            if not dealer.poll(5000):
                out.append(5e6)
                continue
            dealer.recv_multipart()
            out.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        dealer.close()


def run_raw(ctx: zmq.Context, tmp: Path, rate: float, seconds: float) -> float:
    ep = f"ipc://{tmp}/rawpub"
    child = subprocess.Popen([sys.executable, SELF, "_pub", ep, str(rate), str(seconds)])
    sub = new_sub(ctx, ep)
    lat: list[float] = []
    try:
        while sub.poll(10_000):
            f = sub.recv()
            now = time.time_ns()
            if f == b"s end":
                break
            lat.append((now - json.loads(f.split(b" ", 2)[2])["t"]) / 1000)
    finally:
        sub.close()
        child.wait(30)
    skip = int(rate)  # the first second
    return pct(lat[skip:], 0.99) if len(lat) > skip else float("nan")


def run_scale(ctx: zmq.Context, d: Daemon, agents: int, sessions: int, rate: float, seconds: float,
              echo_ep: str, ping_s: float = 0.01) -> dict:
    per = max(1, agents // sessions)
    sub = new_sub(ctx, d.events)
    time.sleep(0.3)
    rss0 = rss_kb(d.proc.pid)
    lat: list[float] = []
    steady_lat: list[tuple[int, float]] = []  # (written ns, latency us) of every line, for the steady window
    steady: dict[str, float] = {}             # the window: all agents started + 1 s .. the first exit
    started = 0
    ended: set[bytes] = set()
    want: set[bytes] = set()
    count = 0
    done = threading.Event()
    stop = threading.Event()

    def read() -> None:
        """The SUB, in a thread of its own from before the first submit: every frame is
        stamped when it arrives, not when the script gets round to it (a submit takes
        seconds on a loaded machine; frames waiting in the SUB's queue meanwhile were
        counted as seconds of latency before)."""
        nonlocal count, started
        while not stop.is_set():
            if not sub.poll(200):
                continue
            while True:
                try:
                    f = sub.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                now = time.time_ns()
                session, kind, body = f.split(b" ", 2)
                if kind == b"agent.output":
                    ev = json.loads(body)
                    count += 1
                    if ev["data"]["i"] >= rate:  # drop each agent's first second
                        lat.append((now - ev["data"]["t"]) / 1000)
                    steady_lat.append((ev["data"]["t"], (now - ev["data"]["t"]) / 1000))
                elif kind == b"worker.started":
                    started += 1
                    if started == per * sessions:
                        steady.update(t0_ns=now + 1e9, cpu0=d.cpu_s(), m0=time.monotonic())
                elif kind == b"worker.exited" and "t0_ns" in steady and "t1_ns" not in steady:
                    steady.update(t1_ns=now, cpu1=d.cpu_s(), m1=time.monotonic())
                elif kind == b"session.state" and json.loads(body)["state"] in (
                        "done", "failed", "stopped", "escalated"):
                    ended.add(session)
                    if want and want <= ended:
                        done.set()

    reader = threading.Thread(target=read)
    reader.start()
    cpu0, t0 = d.cpu_s(), time.monotonic()  # from the first submit: starting the agents is part of the load
    pings: list[float] = []
    raw_pings: list[float] = []
    control = f"ipc://{d.rt}/control"
    threads = [threading.Thread(target=pinger, args=(ctx, control, stop, pings, False, ping_s)),
               threading.Thread(target=pinger, args=(ctx, echo_ep, stop, raw_pings, True, ping_s))]
    rss_peak = rss0
    try:
        ids = []
        for s in range(sessions):
            plan = d.tmp / f"scale{s}.json"
            plan.write_text(json.dumps({"assignments": [
                {"name": f"a{i}", "agent": "command",
                 "argv": [sys.executable, SELF, "_agent", str(rate), str(seconds)]}
                for i in range(per)]}))
            res = d.ctl("submit", "--plan", str(plan), "--target", str(d.repo), "--json")
            if res.returncode != 0:
                raise SystemExit(f"submit failed: {res.stderr.decode()}")
            ids.append(json.loads(res.stdout)["session"])
        want.update(s.encode() for s in ids)
        if want <= ended:
            done.set()
        for t in threads:
            t.start()
        deadline = time.monotonic() + seconds * 3 + 60
        while not done.wait(0.5) and time.monotonic() < deadline:
            rss_peak = max(rss_peak, rss_kb(d.proc.pid))
    finally:
        cpu, wall = d.cpu_s() - cpu0, time.monotonic() - t0
        stop.set()
        for t in threads + [reader]:
            if t.is_alive():
                t.join()
        sub.close()
    expected = per * sessions * int(rate * seconds)
    window = [us for t, us in steady_lat if steady.get("t0_ns", float("inf")) <= t < steady.get("t1_ns", 0)]
    steady_cpu = (100 * (steady["cpu1"] - steady["cpu0"]) / (steady["m1"] - steady["m0"])
                  if "m1" in steady and steady["m1"] > steady["m0"] else float("nan"))
    return {"agents": per * sessions, "lost": expected - count, "p99_us": pct(lat, 0.99) if lat else float("nan"),
            "daemon_cpu_pct": 100 * cpu / wall, "daemon_cpu_us_per_line": cpu * 1e6 / max(1, count),
            "steady_p99_us": pct(window, 0.99) if window else float("nan"), "steady_lines": len(window),
            "steady_cpu_pct": steady_cpu,
            "wall_s": wall, "rss_idle_mb": rss0 / 1024,
            "rss_per_agent_kb": (rss_peak - rss0) / (per * sessions),
            "ping_p99_us": pct(pings, 0.99) if pings else float("nan"),
            "raw_ping_p99_us": pct(raw_pings, 0.99) if raw_pings else float("nan")}


def echo_endpoint(tmp: Path) -> str:
    return f"ipc://{tmp}/echo"


@contextlib.contextmanager
def daemon_and_echo(prefix: str) -> Iterator[tuple[Path, zmq.Context, subprocess.Popen, Daemon]]:
    """A temp dir under /tmp, a context, this file's bare ROUTER echo as a child (on
    ``echo_endpoint(tmp)``) and a real daemon; afterwards the daemon stopped, the echo killed
    (also when a run failed half-way) and the temp dir (the daemon's log, state and clones:
    ~50 MB a scale run) removed."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    ctx = zmq.Context()
    echo = subprocess.Popen([sys.executable, SELF, "_echo", echo_endpoint(tmp)])
    d = None
    try:
        d = Daemon(tmp, None)
        yield tmp, ctx, echo, d
    finally:
        if d is not None:
            d.stop()
        echo.kill()
        echo.wait()
        ctx.destroy(linger=0)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_agent":
        return child_agent(float(sys.argv[2]), float(sys.argv[3])) or 0
    if len(sys.argv) > 1 and sys.argv[1] == "_pub":
        return child_pub(sys.argv[2], float(sys.argv[3]), float(sys.argv[4])) or 0
    if len(sys.argv) > 1 and sys.argv[1] == "_echo":
        return child_echo(sys.argv[2]) or 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--rate", type=float, default=10.0, help="lines per second per agent")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ping-ms", type=float, default=10.0,
                    help="one control Ping (and one bare echo) every this many ms while the agents run")
    args = ap.parse_args()
    runs = []
    with daemon_and_echo("os") as (tmp, ctx, echo, d):
        time.sleep(1.0)  # settle: the idle RSS is read at the first run's start
        for r in range(args.repeat):
            res = run_scale(ctx, d, args.agents, args.sessions, args.rate, args.seconds, echo_endpoint(tmp),
                            args.ping_ms / 1000)
            res["raw_p99_us"] = run_raw(ctx, tmp, args.rate * res["agents"], args.seconds)
            runs.append(res)
            print(f"[{r + 1}/{args.repeat}] " + " ".join(f"{k}={v:,.1f}" if isinstance(v, float) else f"{k}={v}"
                                                         for k, v in res.items()), flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    med["rss_idle_mb"] = runs[0]["rss_idle_mb"]  # only the first run starts from a daemon that has run nothing
    print(f"\nmedians of {args.repeat} ({med['agents']:.0f} agents x {args.rate:g} lines/s for {args.seconds:g} s, "
          f"{args.sessions} sessions):")
    print(f"  lost lines                 {med['lost']:>10,.0f}")
    print(f"  line -> SUB p99 us         {med['p99_us']:>10,.0f}   (raw PUB at the same rate: {med['raw_p99_us']:,.0f})")
    print(f"  daemon CPU                 {med['daemon_cpu_pct']:>10.1f}   % of one core")
    print(f"  steady state p99 us        {med['steady_p99_us']:>10,.0f}   (all started .. first exit, "
          f"{med['steady_lines']:,.0f} lines)")
    print(f"  steady state daemon CPU    {med['steady_cpu_pct']:>10.1f}   % of one core")
    print(f"  RSS idle                   {med['rss_idle_mb']:>10.1f}   MB")
    print(f"  RSS per agent              {med['rss_per_agent_kb']:>10.0f}   KB")
    print(f"  ping p99 us                {med['ping_p99_us']:>10,.0f}   (raw DEALER->ROUTER: {med['raw_ping_p99_us']:,.0f})")
    out = {k: round(v, 1) for k, v in med.items()}
    out["per_run"] = [{"p99_ratio": round(r["p99_us"] / r["raw_p99_us"], 2),  # each run against its own baseline
                       "ping_p99_ratio": round(r["ping_p99_us"] / r["raw_ping_p99_us"], 2)} for r in runs]
    print(json.dumps(out))
    return 1 if any(r["lost"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
