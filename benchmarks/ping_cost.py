#!/usr/bin/env python3
"""What one control request costs an idle daemon: CPU per ``Ping``, against a bare echo.

    python benchmarks/ping_cost.py [--pings 1000] [--every-ms 10] [--repeat 3]

One real ``orchd run`` (temp state dir, nothing submitted) and, as the baseline in the
same run, a bare pyzmq ROUTER that echoes what it receives (``scale.py _echo``, the
baseline of ``scale.py``'s ``ping_p99_us``).  Each repeat sends ``--pings`` control
``Ping`` requests over the daemon's ipc control socket, one every ``--every-ms``, each
waiting for its reply, then the same number of echo requests to the bare ROUTER at
the same pace.  Figures, medians of the repeats:

* ``ping_cpu_us``: the daemon's user+system CPU (all its threads) during the pings,
  less what it spends idle over as long a time (measured right after), per ping;
* ``echo_cpu_us``: the bare echo's CPU per request, measured the same way;
* ``ratio``: the two divided; ``ping_p50_us`` / ``echo_p50_us``: the round trips.

``/proc`` counts CPU in clock ticks (10 ms here), so a figure is good to 10 ms divided
by ``--pings``: 10 us at the default 1,000.

A request that comes after a 10 ms sleep runs through cold caches (benchmarks/README.md,
"what a wake-up costs on this VM"), so ``--every-ms 0`` (back to back) shows the same
path warm.  Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import daemon_and_echo, echo_endpoint  # noqa: E402  (same directory)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from orchd import protocol as p  # noqa: E402
from orchd import wire  # noqa: E402

def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def round_trips(sock: zmq.Socket, body: bytes, n: int, every_s: float) -> list[float]:
    out = []
    for _ in range(n):
        if every_s:
            time.sleep(every_s)
        t0 = time.perf_counter_ns()
        sock.send(body)
        if not sock.poll(5000):
            raise SystemExit("no reply within 5 s")
        sock.recv_multipart()
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def cost(pid: int, sock: zmq.Socket, body: bytes, n: int, every_s: float) -> tuple[float, float]:
    """(CPU us per request beyond idle, p50 round trip us) of ``pid`` answering ``n`` requests."""
    c0, t0 = cpu_s(pid), time.monotonic()
    rtt = round_trips(sock, body, n, every_s)
    c1, took = cpu_s(pid), time.monotonic() - t0
    time.sleep(took)  # the same time idle: what the process spends anyway (timers, the watchdog)
    idle = cpu_s(pid) - c1
    return (c1 - c0 - idle) / n * 1e6, statistics.median(rtt)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pings", type=int, default=1000)
    ap.add_argument("--every-ms", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    every_s = args.every_ms / 1000
    runs = []
    with daemon_and_echo("op") as (tmp, ctx, echo, d):
        ping, bare = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
        ping.linger = bare.linger = 0
        ping.connect(f"ipc://{d.rt}/control")
        bare.connect(echo_endpoint(tmp))
        body = wire.encode_request(p.Ping(), "b")
        round_trips(ping, body, 50, 0)  # both connected and warm before measuring
        round_trips(bare, b"ping", 50, 0)
        time.sleep(1.0)
        for r in range(args.repeat):
            ping_us, ping_p50 = cost(d.proc.pid, ping, body, args.pings, every_s)
            echo_us, echo_p50 = cost(echo.pid, bare, b"ping", args.pings, every_s)
            ratio = ping_us / echo_us if echo_us > 0 else float("nan")  # 0: below /proc's resolution
            runs.append({"ping_cpu_us": ping_us, "echo_cpu_us": echo_us, "ratio": ratio,
                         "ping_p50_us": ping_p50, "echo_p50_us": echo_p50})
            print(f"[{r + 1}/{args.repeat}] " + " ".join(f"{k}={v:,.1f}" for k, v in runs[-1].items()), flush=True)
        ping.close()
        bare.close()
    med = {k: round(statistics.median(r[k] for r in runs), 1) for k in runs[0]}
    print(f"\nmedians of {args.repeat} ({args.pings:,} requests, one every {args.every_ms:g} ms):")
    print(f"  daemon CPU per Ping          {med['ping_cpu_us']:>8,.0f} us   (p50 round trip {med['ping_p50_us']:,.0f} us)")
    print(f"  bare echo CPU per request    {med['echo_cpu_us']:>8,.0f} us   (p50 round trip {med['echo_p50_us']:,.0f} us)")
    print(f"  ratio                        {med['ratio']:>8.1f}")
    print(json.dumps({**med, "per_run": [{k: round(v, 1) for k, v in r.items()} for r in runs]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
