#!/usr/bin/env python3
"""Agent stdout -> orchd -> events PUB, against a raw pyzmq+msgspec baseline, in one run.

    python benchmarks/pipeline.py [--lines 200000] [--paced 5000] [--repeat 3] [--profile FILE]

(a) raw: a publisher process encodes N msgspec Structs (~200 B JSON) and sends one
    frame each on PUB over ipc; a SUB here drains after poll.  lines/s.
(b) daemon: a real ``orchd run``; a SUB here (RCVHWM 0) on its events endpoint; one
    ``command`` assignment whose program prints N JSON lines flat out.  lines/s from the
    first to the last agent.output received (and from worker.started); all N must
    arrive and seq must be contiguous.
(c) latency at 1,000 lines/s: each line carries ``time.time_ns()`` at write; the SUB
    stamps receipt.  p50/p99/max in us, first 100 dropped.  Same for a paced raw PUB, and
    for a bare asyncio relay (the paced agent's pipe read in a callback, each line sent on
    a PUB): the least CPU per line an asyncio process can spend here.

The children are this file run as ``_pub``/``_agent``.  ``--profile FILE`` runs the
daemon under cProfile (stopped with SIGINT so the profile is written).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import zmq

ROOT = Path(__file__).resolve().parent.parent
SELF = str(Path(__file__).resolve())
WARMUP = 100
PAD = "x" * 120


class RawEvent(msgspec.Struct):
    seq: int
    ts: float
    session: str
    worker: str
    kind: str
    t: int
    data: dict


# ------------------------------------------------------------------ children

def _pace(k: int, start: float, period: float) -> None:
    """Sleep until line k's slot on the monotonic clock (fine sleeps, no drift)."""
    delay = start + k * period - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def child_pub(endpoint: str, n: int, paced: bool) -> None:
    """Raw baseline publisher: XPUB (a PUB that also tells us when the SUB has subscribed)."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.sndhwm = 0
    pub.bind(endpoint)
    pub.recv()  # the subscription: the SUB is connected, nothing will be lost
    enc = msgspec.json.Encoder()
    cpu0 = time.process_time()  # this process's CPU, its ZeroMQ I/O thread included (as for the daemon)
    send, head, start = pub.send, b"s agent.output ", time.monotonic()
    for i in range(n):
        if paced:
            _pace(i, start, 0.001)
        ev = RawEvent(seq=i + 1, ts=time.time(), session="s", worker="w", kind="agent.output",
                      t=time.time_ns(), data={"i": i, "pad": PAD})
        send(head + enc.encode(ev))
    pub.send(b"s end ")
    time.sleep(0.5)  # let the queue drain before the socket goes
    print(f"cpu_s {time.process_time() - cpu0}", flush=True)
    ctx.destroy(linger=1000)


def child_agent(n: int, paced: bool, period_s: float = 0.001) -> None:
    """The agent program of the daemon path: JSON lines on stdout (paced: one per ``period_s``)."""
    out = sys.stdout.buffer
    if not paced:  # as fast as it can (same lines as tests/fakeagent.py json:N)
        w, pad = out.write, PAD.encode()
        for i in range(n):
            w(b'{"i":%d,"pad":"%s"}\n' % (i, pad))
        out.flush()
        return
    start = time.monotonic()
    for i in range(n):
        _pace(i, start, period_s)
        out.write(b'{"i":%d,"t":%d}\n' % (i, time.time_ns()))
        out.flush()


def child_relay(endpoint: str, n: int) -> None:
    """The floor of any asyncio daemon on this machine: a bare relay that starts the paced agent,
    reads its stdout in the pipe's read callback (one loop turn per read) and sends each line on
    an XPUB (no parsing, no log, no actors).  Its CPU per line is what one wake-up per line costs
    here."""
    import asyncio
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.sndhwm = 0
    pub.bind(endpoint)
    pub.recv()

    async def relay() -> float:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        send, head = pub.send, b"s agent.output "

        exited = loop.create_future()

        class Relay(asyncio.SubprocessProtocol):
            rest = b""

            def process_exited(self) -> None:
                if not exited.done():
                    exited.set_result(None)

            def pipe_data_received(self, fd: int, data: bytes) -> None:
                lines = (self.rest + data).split(b"\n")
                self.rest = lines.pop()
                for line in lines:
                    send(head + line)

            def pipe_connection_lost(self, fd: int, exc) -> None:
                if fd == 1 and not done.done():
                    done.set_result(None)

        class AtOnce(asyncio.Protocol):
            """The pipe's reads straight to the relay in the read callback, as orchd/proc.py does
            (asyncio's subprocess transport would hand each one on a loop turn later)."""

            def __init__(self, inner, relay) -> None:
                self.inner, self.relay = inner, relay

            def data_received(self, data: bytes) -> None:
                self.relay.pipe_data_received(1, data)

            def eof_received(self):
                return self.inner.eof_received()

            def connection_lost(self, exc) -> None:
                self.inner.connection_lost(exc)

        cpu0 = time.process_time()
        transport, proto = await loop.subprocess_exec(Relay, sys.executable, SELF, "_agent", str(n), "1", "0.001",
                                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        pipe = transport.get_pipe_transport(1)
        pipe.set_protocol(AtOnce(pipe.get_protocol(), proto))
        await done
        cpu = time.process_time() - cpu0
        await exited  # reaped before the loop closes
        transport.close()
        return cpu

    cpu = asyncio.run(relay())
    pub.send(b"s end ")
    time.sleep(0.5)
    print(f"cpu_s {cpu}", flush=True)
    ctx.destroy(linger=1000)


# ------------------------------------------------------------------ the SUB

def drain(sub: zmq.Socket, done, idle_s: float = 10.0) -> list[tuple[int, bytes]]:
    """Poll, then drain with non-blocking recv; (recv time_ns, frame) until ``done(frame)``."""
    got: list[tuple[int, bytes]] = []
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    recv, now, last = sub.recv, time.time_ns, time.monotonic()
    while True:
        if not poller.poll(200):
            if time.monotonic() - last > idle_s:
                return got  # gave up: the caller reports what is missing
            continue
        last = time.monotonic()
        while True:
            try:
                frame = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            got.append((now(), frame))
            if done(frame):
                return got


def new_sub(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.rcvhwm = 0
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    return sub


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def latency(samples: list[float]) -> dict:
    s = samples[WARMUP:]
    if not s:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {"p50": pct(s, 0.50), "p99": pct(s, 0.99), "max": max(s)}


# ------------------------------------------------------------------ (a) raw

def run_raw(ctx: zmq.Context, tmp: Path, n: int, paced: bool, relay: bool = False) -> dict:
    ep = f"ipc://{tmp}/raw{int(paced)}{'r' if relay else ''}"
    argv = ["_relay", ep, str(n)] if relay else ["_pub", ep, str(n), str(int(paced))]
    child = subprocess.Popen([sys.executable, SELF, *argv], stdout=subprocess.PIPE)
    sub = new_sub(ctx, ep)
    try:
        got = drain(sub, lambda f: f.startswith(b"s end"))
    finally:
        sub.close()
        out, _ = child.communicate(timeout=30)
    msgs = [(t, f) for t, f in got if f.startswith(b"s agent.output ")]
    res = {"n": len(msgs), "missing": n - len(msgs)}
    if out.startswith(b"cpu_s "):  # the publisher's CPU from its first send to its last (+ the 0.5 s linger)
        res["cpu_us_per_line"] = float(out.split()[1]) * 1e6 / max(1, n)
    if paced:
        class Stamped(msgspec.Struct):
            t: int
        dec = msgspec.json.Decoder(Stamped)  # RawEvent's and the relayed agent line's "t"
        res.update(latency([(t - dec.decode(f[15:]).t) / 1000 for t, f in msgs]))
    elif len(msgs) > 1:
        res["rate"] = (len(msgs) - 1) / ((msgs[-1][0] - msgs[0][0]) / 1e9)
    return res


# ------------------------------------------------------------------ (b)(c) daemon

class Daemon:
    def __init__(self, tmp: Path, profile: str | None, extra: list[str] = ()) -> None:
        self.tmp, self.rt = tmp, tmp / "rt"
        self.events = f"ipc://{self.rt}/events"
        env = {k: v for k, v in os.environ.items() if k != "ORCHD_RUNTIME_DIR"}
        self.env = {**env, "PYTHONPATH": f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"}
        prof = ["-m", "cProfile", "-o", profile] if profile else []
        self.log = open(tmp / "daemon.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, *prof, "-m", "orchd.app", "run", "--state-dir", str(tmp / "state"),
             "--runtime-dir", str(self.rt), *extra], env=self.env, cwd=ROOT, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)
        self.profile, self.plans = profile, 0
        try:
            self._ready()
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> None:
        deadline = time.monotonic() + 30
        while self.ctl("status", "--json").returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"daemon did not start:\n{(self.tmp / 'daemon.log').read_text()[-3000:]}")
            time.sleep(0.05)
        self.repo = self.tmp / "target"
        if (self.repo / ".git").is_dir():
            return  # a daemon started again on the same directory (history_rss.py)
        git = ["git", "-c", "user.name=b", "-c", "user.email=b@b", "-C", str(self.repo)]
        subprocess.run(["git", "init", "-q", "-b", "main", str(self.repo)], check=True)
        (self.repo / "README.md").write_text("benchmark target\n")
        subprocess.run(git + ["add", "-A"], check=True)
        subprocess.run(git + ["commit", "-qm", "init"], check=True)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "orchctl.cli", *args, "--runtime-dir", str(self.rt)],
                              capture_output=True, env=self.env, cwd=ROOT, timeout=60)

    def submit(self, argv: list[str]) -> str:
        self.plans += 1
        plan = self.tmp / f"plan{self.plans}.json"
        plan.write_text(json.dumps({"assignments": [{"name": "bench", "agent": "command", "argv": argv}]}))
        res = self.ctl("submit", "--plan", str(plan), "--target", str(self.repo), "--json")
        if res.returncode != 0:
            raise SystemExit(f"submit failed: {res.stderr.decode()}")
        return json.loads(res.stdout)["session"]

    def cpu_s(self) -> float:
        """The daemon process's user+system CPU seconds so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def written(self) -> tuple[int, int]:
        """Bytes the daemon process has caused to be written to storage so far, and the part of
        them that never reached it (``cancelled_write_bytes``: dirty pages of a file deleted or
        truncated before write-back, such as the log's stage file); /proc io."""
        io = dict(line.split(":") for line in Path(f"/proc/{self.proc.pid}/io").read_text().splitlines())
        return int(io["write_bytes"]), int(io["cancelled_write_bytes"])

    def staged_moved(self, timeout_s: float = 30.0) -> None:
        """Until the event log's stage file is gone: every event of the run is in SQLite, so its
        disk writes are counted (orchd/store.py moves staged events within FLUSH_AFTER_S)."""
        stage = self.tmp / "state" / "events.sqlite3-stage"
        deadline = time.monotonic() + timeout_s
        while stage.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{stage} still there after {timeout_s}s: the disk figure would miss its events")
            time.sleep(0.05)  # polled: the daemon tells no one when it moves the stage

    def written_through_exit(self) -> tuple[int, int]:
        """``written()`` at the daemon's exit, after SIGTERM: its last flush and checkpoint
        included (the exited process is read before it is reaped)."""
        self.proc.send_signal(signal.SIGTERM)
        os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT)
        try:
            return self.written()
        finally:
            self.stop()

    def stop(self) -> None:
        # cProfile writes its file only on an orderly exit: SIGINT (SIGTERM is handled the same)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT if self.profile else signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def run_daemon(ctx: zmq.Context, d: Daemon, n: int, paced: bool, period_s: float = 0.001,
               to_exit: bool = False) -> dict:
    """One session of an agent printing ``n`` lines (paced: one per ``period_s``), measured from
    the subscriber.  ``to_exit``: stop the daemon at the end and count its disk writes through its
    exit (the disk figure: each event's SQLite pages are written once more by a checkpoint)."""
    sub = new_sub(ctx, d.events)
    time.sleep(0.3)  # let the subscription reach the PUB before anything is published
    cpu0, (written0, cancelled0) = d.cpu_s(), d.written()
    session = d.submit([sys.executable, SELF, "_agent", str(n), str(int(paced)), str(period_s)])
    topic = session.encode() + b" "
    exited = topic + b"worker.exited "
    try:
        got = drain(sub, lambda f: f.startswith(exited))
    finally:
        sub.close()
    d.staged_moved()
    cpu = d.cpu_s() - cpu0
    written1, cancelled1 = d.written_through_exit() if to_exit else d.written()
    written, cancelled = written1 - written0, cancelled1 - cancelled0
    mine = [(t, f) for t, f in got if f.startswith(topic)]
    seqs = [int(f[f.index(b'{"seq":') + 7: f.index(b",", f.index(b'{"seq":'))]) for _, f in mine]
    gaps = sum(1 for a, b in zip(seqs, seqs[1:]) if b != a + 1)
    out = [(t, f) for t, f in mine if f.startswith(topic + b"agent.output ")]
    started = [t for t, f in mine if f.startswith(topic + b"worker.started ")]
    res = {"n": len(out), "missing": n - len(out), "seq_gaps": gaps,
           "complete": bool(mine) and mine[0][1].startswith(topic + b"session.submitted ")
           and bool(got) and got[-1][1].startswith(exited)}
    if paced:  # also split at the worker's stamp: pipe+worker | journal+SQLite+PUB+SUB
        evs = [(t, json.loads(f.split(b" ", 2)[2])) for t, f in out]
        res.update(latency([(t - e["data"]["t"]) / 1000 for t, e in evs]))
        res["to_worker_p50"] = latency([e["ts"] * 1e6 - e["data"]["t"] / 1000 for _, e in evs])["p50"]
        res["after_worker_p50"] = latency([t / 1000 - e["ts"] * 1e6 for t, e in evs])["p50"]
    elif len(out) > 1:
        res["rate"] = (len(out) - 1) / ((out[-1][0] - out[0][0]) / 1e9)
        if started:
            res["rate_from_start"] = len(out) / ((out[-1][0] - started[0]) / 1e9)
    res["cpu_us_per_line"] = cpu * 1e6 / max(1, len(out))  # the daemon's user+sys CPU (incl. submit)
    res["written_bytes_per_event"] = written / max(1, len(mine))  # log + WAL + daemon log, all events of the session
    res["net_written_bytes_per_event"] = (written - cancelled) / max(1, len(mine))  # what reached the disk
    if to_exit:
        res.update(events=len(mine), written=written, net_written=written - cancelled)
    return res


def run_disk(ctx: zmq.Context, tmp: Path, r: int, args) -> dict:
    """Disk written per event at 50 events/s: the marginal cost of an event.

    Two daemons of their own, each warmed up with a few lines, then one 50 lines/s session
    counted through the daemon's exit, so each window holds that session's events and all their
    writes (stage, WAL, the checkpoint into the database, the daemon's own log) and no other
    run's checkpoint.  The kernel also counts the reaped children's writes in the daemon's
    (the session's clone, commit and merge by git), a cost per session, not per event: so the
    figure is (long session - short session) / (their difference in events)."""
    out = {}
    for label, n in (("short", 20), ("long", args.slow)):
        home = tmp / f"d{r}{label}"
        home.mkdir()
        d = Daemon(home, None, args.daemon_arg)
        try:
            run_daemon(ctx, d, 20, False)
            out[label] = run_daemon(ctx, d, n, True, 0.02, to_exit=True)
        finally:
            d.stop()
    long, short = out["long"], out["short"]
    extra = max(1, long["events"] - short["events"])
    res = dict(long)
    res["session_written_bytes_per_event"] = long["written_bytes_per_event"]
    res["written_bytes_per_event"] = (long["written"] - short["written"]) / extra
    res["net_written_bytes_per_event"] = (long["net_written"] - short["net_written"]) / extra
    for k in ("events", "written", "net_written"):
        del res[k]
    return res


# ------------------------------------------------------------------ main

def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_pub":
        return child_pub(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1") or 0
    if len(sys.argv) > 1 and sys.argv[1] == "_relay":
        return child_relay(sys.argv[2], int(sys.argv[3])) or 0
    if len(sys.argv) > 1 and sys.argv[1] == "_agent":
        return child_agent(int(sys.argv[2]), sys.argv[3] == "1", float(sys.argv[4])) or 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--paced", type=int, default=5_000)
    ap.add_argument("--slow", type=int, default=500, help="lines of the 50 lines/s run (disk written per event)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", metavar="FILE", help="run the daemon under cProfile, write stats to FILE")
    ap.add_argument("--daemon-arg", action="append", default=[], metavar="ARG",
                    help="one more argument for 'orchd run' (repeatable), e.g. --daemon-arg=--http=off")
    ap.add_argument("--tmp-base", default="/tmp", help="where the temp dir goes (state + ipc; keep it short)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ob", dir=args.tmp_base))  # short: ipc paths < ~100 bytes
    ctx = zmq.Context()
    d = None
    runs: dict[str, list[dict]] = {"raw": [], "daemon": [], "raw_paced": [], "relay_paced": [], "daemon_paced": [],
                                   "daemon_50": []}
    try:
        d = Daemon(tmp, os.path.abspath(args.profile) if args.profile else None, args.daemon_arg)
        run_daemon(ctx, d, 1000, False)  # warm-up: imports, first session, SQLite file
        for r in range(args.repeat):
            for key, fn in (("raw", lambda: run_raw(ctx, tmp, args.lines, False)),
                            ("daemon", lambda: run_daemon(ctx, d, args.lines, False)),
                            ("raw_paced", lambda: run_raw(ctx, tmp, args.paced, True)),
                            ("relay_paced", lambda: run_raw(ctx, tmp, args.paced, True, relay=True)),
                            ("daemon_paced", lambda: run_daemon(ctx, d, args.paced, True)),
                            ("daemon_50", lambda: run_disk(ctx, tmp, r, args))):
                res = fn()
                runs[key].append(res)
                print(f"[{r + 1}/{args.repeat}] {key:13s} " + " ".join(
                    f"{k}={v:,.0f}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()), flush=True)
    finally:
        if d is not None:
            d.stop()
        ctx.destroy(linger=0)
        shutil.rmtree(tmp, ignore_errors=True)

    def med(key: str, field: str) -> float:
        vals = [r[field] for r in runs[key] if field in r]
        return statistics.median(vals) if vals else float("nan")

    raw, dmn = med("raw", "rate"), med("daemon", "rate")
    lost = sum(r["missing"] for rs in runs.values() for r in rs)
    gaps = sum(r.get("seq_gaps", 0) for rs in runs.values() for r in rs)
    print(f"\nmedians of {args.repeat} (flood {args.lines:,} lines, paced {args.paced:,} at 1,000/s):")
    print(f"  {'':24s}{'raw':>12s}{'daemon':>12s}{'daemon/raw':>12s}")
    print(f"  {'lines/s':24s}{raw:>12,.0f}{dmn:>12,.0f}{dmn / raw:>12.2f}")
    print(f"  {'lines/s from started':24s}{'':>12s}{med('daemon', 'rate_from_start'):>12,.0f}")
    cpu = med("daemon", "cpu_us_per_line")
    print(f"  {'daemon CPU us/line':24s}{'':>12s}{cpu:>12.1f}   (CPU-bound ceiling {1e6 / cpu:,.0f} lines/s)")
    raw_pc, dmn_pc = med("raw_paced", "cpu_us_per_line"), med("daemon_paced", "cpu_us_per_line")
    print(f"  {'  same, paced':24s}{raw_pc:>12.1f}{dmn_pc:>12.1f}{dmn_pc / raw_pc:>12.1f}   (raw: the publisher)")
    relay_pc = med("relay_paced", "cpu_us_per_line")
    print(f"  {'  same, asyncio relay':24s}{relay_pc:>12.1f}{dmn_pc:>12.1f}{dmn_pc / relay_pc:>12.1f}"
          "   (a bare asyncio pipe -> PUB relay: the floor)")
    for q in ("p50", "p99", "max"):
        a, b = med("raw_paced", q), med("daemon_paced", q)
        print(f"  {'latency ' + q + ' us':24s}{a:>12,.0f}{b:>12,.0f}{b / a:>12.1f}")
    print(f"  {'  relay p99 us':24s}{med('relay_paced', 'p99'):>12,.0f}")
    print(f"  {'p50 split: write->worker':24s}{'':>12s}{med('daemon_paced', 'to_worker_p50'):>12,.0f}   us")
    print(f"  {'p50 split: worker->SUB':24s}{'':>12s}{med('daemon_paced', 'after_worker_p50'):>12,.0f}   us")
    disk = med("daemon_50", "written_bytes_per_event")
    net = med("daemon_50", "net_written_bytes_per_event")
    print(f"  {'disk written/event, 50/s':24s}{'':>12s}{disk:>12,.0f}   bytes (log, stage, WAL and the daemon's own log)")
    print(f"  {'  net of cancelled':24s}{'':>12s}{net:>12,.0f}   bytes (less what was deleted before write-back)")
    print(f"  missing lines: {lost}, seq gaps: {gaps}")
    print(json.dumps({"flood_ratio": round(dmn / raw, 3), "flood_cpu_us_per_line": round(cpu, 1),
                      "paced_p99_us": round(med("daemon_paced", "p99")),
                      "paced_cpu_us_per_line": round(med("daemon_paced", "cpu_us_per_line"), 1),
                      "raw_paced_p99_us": round(med("raw_paced", "p99")),
                      "raw_paced_cpu_us_per_line": round(raw_pc, 1),
                      "relay_paced_cpu_us_per_line": round(relay_pc, 1),
                      "relay_paced_p99_us": round(med("relay_paced", "p99")),
                      "disk_bytes_per_event_50_per_s": round(disk),
                      "disk_net_bytes_per_event_50_per_s": round(net), "lost": lost, "seq_gaps": gaps,
                      "per_run": [{"flood_ratio": round(d["rate"] / r["rate"], 3),
                                   "paced_cpu_ratio": round(dp["cpu_us_per_line"] / rp["cpu_us_per_line"], 2),
                                   "paced_p99_ratio": round(dp["p99"] / rp["p99"], 2)}
                                  for r, d, rp, dp in zip(runs["raw"], runs["daemon"], runs["raw_paced"],
                                                          runs["daemon_paced"])
                                  if "rate" in r and "rate" in d and "cpu_us_per_line" in rp]}))
    return 1 if lost or gaps else 0


if __name__ == "__main__":
    sys.exit(main())
