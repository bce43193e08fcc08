#!/usr/bin/env python3
"""Does a frozen browser slow the daemon or other browsers?  Event latency with and without one.

    python benchmarks/web_frozen_client.py [--lines 3000] [--frozen 4]

A real ``orchd run`` with its HTTP bridge on 127.0.0.1.  Each round runs one ``command``
assignment printing ``--lines`` JSON lines paced at 1,000/s, each carrying ``time.time_ns()``
(``pipeline.py``'s agent), and measures the delay from the agent's write to receipt at:

* a ZeroMQ SUB on the daemon's events socket (the daemon's own event latency), and
* a reading SSE client of the bridge (another browser).

Round ``baseline``: no frozen client.  Round ``frozen``: ``--frozen`` SSE clients connected with a
4 KiB receive buffer that never read.  Then a flood (20,000 lines flat out) fills the frozen
clients' queues, and the round ``after drop`` runs again; the bridge's
``orchd_http_sse_dropped_total`` says how many it dropped.  p50/p99/max in ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline  # noqa: E402  (the daemon wrapper and the paced agent)


def sse_reader(url: str, topic: str, n: int, out: list[float], ready: threading.Event) -> None:
    """Read SSE frames with a plain socket (HTTP/1.0: unchunked); stamp each agent.output's delay."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"GET /api/events?session={topic} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
    fh = sock.makefile("rb")
    ready.set()
    got = 0
    for line in fh:
        if line.startswith(b"data: "):
            ev = json.loads(line[6:])
            if ev["kind"] == "agent.output":
                out.append((time.time_ns() - ev["data"]["t"]) / 1e6)
                got += 1
            if ev["kind"] == "worker.exited" or got >= n:
                break
    sock.close()


def frozen_client(url: str) -> socket.socket:
    host, port = url.split("//")[1].rstrip("/").split(":")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    s.sendall(f"GET /api/events HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
    return s


def stats(xs: list[float]) -> str:
    xs = sorted(xs[pipeline.WARMUP:])
    if not xs:
        return "no samples"
    return (f"p50 {xs[len(xs) // 2]:7.2f}  p99 {xs[min(len(xs) - 1, int(0.99 * len(xs)))]:7.2f}  "
            f"max {xs[-1]:7.2f}  (n={len(xs)})")


def dropped(url: str) -> float:
    text = urllib.request.urlopen(url + "metrics").read().decode()
    return next((float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith("orchd_http_sse_dropped_total ")), 0.0)


def run_round(ctx, d, url: str, n: int) -> tuple[list[float], list[float]]:
    sub = pipeline.new_sub(ctx, d.events)
    time.sleep(0.3)  # the subscription reaches the PUB first
    session = d.submit([sys.executable, pipeline.SELF, "_agent", str(n), "1"])
    sse: list[float] = []
    ready = threading.Event()
    reader = threading.Thread(target=sse_reader, args=(url, session, n, sse, ready), daemon=True)
    reader.start()
    ready.wait(10)
    topic = session.encode() + b" "
    got = pipeline.drain(sub, lambda f: f.startswith(topic + b"worker.exited "))
    sub.close()
    reader.join(60)
    zlat = [(t - json.loads(f.split(b" ", 2)[2])["data"]["t"]) / 1e6 for t, f in got
            if f.startswith(topic + b"agent.output ")]
    return zlat, sse


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=3000)
    ap.add_argument("--frozen", type=int, default=4)
    args = ap.parse_args()
    os.environ["ORCHD_HTTP_LISTEN"] = "127.0.0.1:0"
    tmp = Path(tempfile.mkdtemp(prefix="owb", dir="/tmp"))
    d = pipeline.Daemon(tmp, None)
    ctx = zmq.Context()
    frozen: list[socket.socket] = []
    try:
        url = json.loads(d.ctl("web", "--json").stdout)["url"]
        rounds = []
        rounds.append(("baseline", *run_round(ctx, d, url, args.lines)))
        frozen = [frozen_client(url) for _ in range(args.frozen)]
        rounds.append(("frozen", *run_round(ctx, d, url, args.lines)))
        before = dropped(url)
        flood = d.submit([sys.executable, pipeline.SELF, "_agent", "20000", "0"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
                dropped(url) - before < args.frozen
                or json.loads(d.ctl("status", flood, "--json").stdout)["state"] not in ("done", "failed")):
            time.sleep(0.2)  # the frozen clients dropped, and the flood's session ended (merged)
        rounds.append(("after drop", *run_round(ctx, d, url, args.lines)))
        print(f"event latency in ms (agent write -> receipt), {args.lines:,} lines at 1,000/s:")
        for name, zlat, sse in rounds:
            print(f"  {name:11s} daemon SUB  {stats(zlat)}")
            print(f"  {'':11s} SSE client  {stats(sse)}")
        print(f"frozen SSE clients dropped by the bridge: {dropped(url):.0f} of {args.frozen}")
    finally:
        for s in frozen:
            s.close()
        ctx.destroy(linger=0)
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
