"""``orchctl watch`` and ``orchctl logs``: history from the log, then live events.

The Clone pattern: subscribe first, make sure the subscription is live
(``Sync`` → wait for ``~sync <token>`` on the SUB), then page through
``Replay`` from ``--since``, then apply live frames whose ``seq`` is higher
than the last one printed.  Nothing is missed (the subscription was live
before the replay was read) and nothing is printed twice (``seq`` only goes
up).  Watching everything (no SESSION), a jump in ``seq`` means the PUB
dropped frames for us (high-water mark): the gap is filled from the log.
"""

from __future__ import annotations

import json
import secrets
import sys
import time

import msgspec
import zmq

from orchctl.client import Client, Unreachable
from orchd import protocol as p
from orchd import wire

SYNC_DEADLINE_S = 5.0
IDLE_PING_S = 2.0


class _Stamp(msgspec.Struct):
    seq: int
    kind: str = ""
    session: str | None = None
    state: str | None = None


_stamp = msgspec.json.Decoder(_Stamp)


class _Printer:
    def __init__(self, as_json: bool, until_done: bool, sessions: set[str] | None) -> None:
        self.as_json = as_json
        self.until_done = until_done
        self.active = sessions  # sessions to wait for (--until-done)
        self.cursor = 0
        self.out = sys.stdout.buffer

    def event(self, js: bytes) -> bool:
        """Print one event if new; True when --until-done is satisfied."""
        st = _stamp.decode(js)
        if st.seq <= self.cursor:
            return False
        self.cursor = st.seq
        if self.as_json:
            self.out.write(js + b"\n")
        else:
            from orchctl import render
            self.out.write(render.event_line(json.loads(js)).encode() + b"\n")
        if self.until_done and st.kind == "session.state" and st.state in p.SESSION_TERMINAL \
                and self.active is not None:
            self.active.discard(st.session)
            return not self.active
        return False


def _sync(client: Client, sub: zmq.Socket, early: list[bytes]) -> None:
    deadline = time.monotonic() + SYNC_DEADLINE_S
    while time.monotonic() < deadline:
        token = secrets.token_hex(8)
        want = wire.SYNC_TOPIC + b" " + token.encode()
        reply = client.call(p.Sync(token=token))
        if isinstance(reply, p.Error):
            raise Unreachable(f"daemon refused sync: {reply.detail}")
        until = time.monotonic() + 0.2
        while (left := until - time.monotonic()) > 0:
            if not sub.poll(int(left * 1000) + 1, zmq.POLLIN):
                break
            frame = sub.recv()
            if frame == want:
                return
            if not frame.startswith(wire.SYNC_TOPIC):
                early.append(frame)
    raise Unreachable("the events socket did not deliver a sync marker in time")


def _replay(client: Client, session: str | None, printer: _Printer) -> bool:
    while True:
        reply = client.call(p.Replay(since=printer.cursor, session=session, limit=5000), timeout_s=10)
        if isinstance(reply, p.Error):
            raise Unreachable(f"replay refused: {reply.detail}")
        for raw in reply.events:
            if printer.event(bytes(raw)):
                return True
        sys.stdout.flush()
        if not reply.more:
            return False


def watch(client: Client, events_ep: str, session: str | None, since: int, until_done: bool,
          as_json: bool, kinds=None) -> int:
    active = None
    if until_done:
        reply = client.call(p.Status(session=session))
        if isinstance(reply, p.Error):
            print(f"orchctl: {reply.detail} [{reply.code}]", file=sys.stderr)
            return 1
        active = {s.id for s in reply.sessions if s.state not in p.SESSION_TERMINAL} if session is None else {session}
    printer = _Printer(as_json, until_done, active)
    printer.cursor = since
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.rcvhwm = 0
    sub.setsockopt(zmq.SUBSCRIBE, wire.topic(session) + b" " if session else b"")
    sub.setsockopt(zmq.SUBSCRIBE, wire.SYNC_TOPIC)
    sub.connect(events_ep)
    try:
        early: list[bytes] = []
        _sync(client, sub, early)
        if _replay(client, session, printer):
            return 0
        if until_done and active is not None and not active:
            return 0
        pending = early
        last_seen = time.monotonic()
        while True:
            for frame in pending:
                if frame.startswith(wire.SYNC_TOPIC):
                    continue
                js = frame.split(b" ", 2)[2]
                if session is None and _stamp.decode(js).seq > printer.cursor + 1:
                    if _replay(client, session, printer):  # a gap: PUB dropped frames for us
                        return 0
                if printer.event(js):
                    sys.stdout.flush()
                    return 0
            sys.stdout.flush()
            pending = []
            if sub.poll(int(IDLE_PING_S * 1000), zmq.POLLIN):
                last_seen = time.monotonic()
                while len(pending) < 10_000:
                    try:
                        pending.append(sub.recv(zmq.NOBLOCK))
                    except zmq.Again:
                        break
            elif time.monotonic() - last_seen >= IDLE_PING_S:
                client.call(p.Ping())  # raises Unreachable if the daemon went away
                last_seen = time.monotonic()
    finally:
        sub.close(linger=0)


def history(client: Client, session: str, worker: str | None, as_json: bool) -> int:
    """Print a session's agent text and stderr lines recorded so far."""
    cursor = 0
    keep = {"agent.text", "worker.log", "agent.error", "agent.result", "worker.exited", "worker.started"}
    out = sys.stdout.buffer
    while True:
        reply = client.call(p.Replay(since=cursor, session=session, limit=5000), timeout_s=10)
        if isinstance(reply, p.Error):
            print(f"orchctl: {reply.detail} [{reply.code}]", file=sys.stderr)
            return 1
        for raw in reply.events:
            ev = json.loads(bytes(raw))
            cursor = ev["seq"]
            if ev["kind"] not in keep or (worker and ev.get("worker") != worker):
                continue
            if as_json:
                out.write(bytes(raw) + b"\n")
            else:
                text = ev.get("text") or ev.get("line") or ev.get("message") or json.dumps(
                    {k: v for k, v in ev.items() if k not in ("seq", "ts", "session", "agent", "gen", "kind")})
                out.write(f"[{ev.get('worker') or '-'}] {text}\n".encode())
        if not reply.more:
            break
    sys.stdout.flush()
    return 0
