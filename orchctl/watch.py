"""``orchctl watch`` and ``orchctl logs``: history from the log, then live events.

The Clone pattern: subscribe first, make sure the subscription is live
(``Sync`` → wait for ``~sync <token>`` on the SUB), then page through
``Replay`` from ``--since``, then apply live frames.  Which frame to print
and which range to read again from the log is decided by the sans-I/O
``orchctl.cursor.Cursor``: nothing is printed twice (``seq`` only goes up),
and frames the PUB dropped for us (high-water mark) are found by ``seq``
(watching everything) or by ``prev`` (watching one session) and read from
the log.  After ``IDLE_S`` without a frame the log's tail is read too: it
repairs a dropped tail and tells a dead daemon from a quiet one.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections import deque
from typing import Callable

import msgspec
import zmq

from orchctl.client import Client, Refused, Unreachable
from orchctl.cursor import Cursor, Item
from orchd import protocol as p
from orchd import wire

SYNC_DEADLINE_S = 5.0
IDLE_S = 2.0
PAGE = 5000
DRAIN_MAX = 10_000  # frames read from the SUB before they are handled


class _Stamp(msgspec.Struct):
    seq: int
    prev: int = 0
    kind: str = ""
    session: str | None = None
    worker: str | None = None
    state: str | None = None
    reason: str | None = None
    rehearse: bool = False  # session.submitted: a rehearsal session


_stamp = msgspec.json.Decoder(_Stamp)


def _item(js: bytes) -> Item:
    """An event's JSON as the cursor's item; a malformed one is the daemon's fault (``WireError``)."""
    try:
        st = _stamp.decode(js)
    except msgspec.DecodeError as exc:
        raise wire.WireError(p.ErrorCode.BAD_JSON, f"malformed event from the daemon: {exc}") from None
    return Item(st.seq, st.prev, (js, st))


def _frame_item(frame: bytes) -> Item:
    """A PUB frame ``<topic> <kind> <json>`` as the cursor's item."""
    parts = frame.split(b" ", 2)
    if len(parts) != 3:
        raise wire.WireError(p.ErrorCode.BAD_FRAMES, f"malformed event frame from the daemon: {frame[:80]!r}")
    return _item(parts[2])


NOISE_KINDS = ("worker.log",)
"""Hidden from human ``watch`` output unless asked for (``--all``, or a ``--kind`` that names them):
an agent CLI's stderr is mostly noise (colour warnings, start-up timings); ``logs`` shows it."""


class Filter(msgspec.Struct, frozen=True):
    """Which events ``watch`` prints (client-side: the cursor still sees every event).

    ``workers``: exact worker names; ``kinds``: kind prefixes (``agent.``);
    ``hide``: kinds left out when no ``kinds`` are given.
    """

    workers: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    hide: tuple[str, ...] = ()

    def shows(self, kind: str, worker: str | None) -> bool:
        if self.workers and worker not in self.workers:
            return False
        if self.kinds:
            return kind.startswith(self.kinds)
        return kind not in self.hide


class _Printer:
    """Prints handed-out events; notices the end of the session ``--until-done`` waits for.

    ``line`` formats one shown event for human output (``watch``'s event
    line by default), told whether its session is a rehearsal; ``tail``:
    hold back all but the last ``tail`` lines of the history until
    ``end_of_history``.  ``rehearsals``: the rehearsal sessions known
    beforehand; every ``session.submitted{rehearse}`` seen adds its session,
    printed or not.
    """

    def __init__(self, as_json: bool, until: str | None, only: Filter | None = None,
                 line: Callable[[dict, bool], str] | None = None, tail: int | None = None,
                 rehearsals: set[str] | None = None) -> None:
        self.as_json = as_json
        self.until = until
        self.only = only or Filter()
        self.line = line
        self.ended: _Stamp | None = None  # the watched session's terminal session.state, once printed
        self.out = sys.stdout.buffer
        self._tail: deque[bytes] | None = deque(maxlen=tail) if tail is not None else None
        self.rehearsals = set(rehearsals or ())

    def _write(self, data: bytes) -> None:
        if self._tail is not None:
            self._tail.append(data)
        else:
            self.out.write(data)

    def end_of_history(self) -> None:
        """The history is printed: write the held-back tail; from now on lines go out at once."""
        if self._tail is not None:
            held, self._tail = self._tail, None
            for data in held:
                self.out.write(data)

    def emit(self, items: list[Item]) -> bool:
        """Print events in order; True once the watched session has ended (nothing after is printed)."""
        for it in items:
            js, st = it.data
            if st.rehearse and st.kind == "session.submitted" and st.session:
                self.rehearsals.add(st.session)
            if self.only.shows(st.kind, st.worker):
                if self.as_json:
                    self._write(js + b"\n")
                else:
                    from orchctl import render
                    ev = json.loads(js)
                    rehearsal = st.session in self.rehearsals
                    self._write((self.line(ev, rehearsal) if self.line else render.event_line(ev, rehearsal)).encode()
                                + b"\n")
            if self.until is not None and st.kind == "session.state" and st.session == self.until \
                    and st.state in p.SESSION_TERMINAL:
                self.ended = st
                return True
        return False


def _sync(client: Client, sub: zmq.Socket, early: list[bytes]) -> None:
    deadline = time.monotonic() + SYNC_DEADLINE_S
    while time.monotonic() < deadline:
        token = secrets.token_hex(8)
        want = wire.SYNC_TOPIC + b" " + token.encode()
        reply = client.call(p.Sync(token=token))
        if isinstance(reply, p.Error):
            raise Refused(reply)
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


def _fetch(client: Client, session: str | None, cursor: Cursor, printer: _Printer) -> bool:
    """Ask for replay pages while the cursor wants them; True once the watched session has ended."""
    while (since := cursor.next_fetch()) is not None:
        reply = client.call(p.Replay(since=since, session=session, limit=PAGE))
        if isinstance(reply, p.Error):
            raise Refused(reply)
        if printer.emit(cursor.page([_item(bytes(raw)) for raw in reply.events], reply.more)):
            return True
        sys.stdout.flush()
    return False


def _live(client: Client, sub: zmq.Socket, session: str | None, cursor: Cursor, printer: _Printer,
          pending: list[bytes]) -> None:
    """Live frames (and the log where they have gaps) until the watched session ends."""
    while True:
        for frame in pending:
            if frame.startswith(wire.SYNC_TOPIC):
                continue
            if printer.emit(cursor.live(_frame_item(frame))):
                return
        if _fetch(client, session, cursor, printer):
            return
        sys.stdout.flush()
        pending = []
        if sub.poll(int(IDLE_S * 1000), zmq.POLLIN):
            while len(pending) < DRAIN_MAX:
                try:
                    pending.append(sub.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
        else:
            cursor.idle()  # a dropped tail, or a dead daemon: the replay call says which


def _stream(client: Client, events_ep: str, session: str | None, since: int, printer: _Printer,
            initial: p.SessionInfo | None) -> None:
    """History from ``since``, then live, until the printer's session ends (or forever without one)."""
    sub = client.subscribe(events_ep, [wire.topic(session) + b" " if session else b"", wire.SYNC_TOPIC])
    try:
        early: list[bytes] = []
        _sync(client, sub, early)
        cursor = Cursor(since, by_session=session is not None)
        # The history: everything logged up to now, which covers the early frames.
        ended = _fetch(client, session, cursor, printer)
        printer.end_of_history()
        # Without its end in the history, a session that had ended when the
        # watch began ended at or before --since: the status says how.
        if not ended and not (printer.until is not None and initial.state in p.SESSION_TERMINAL):
            _live(client, sub, session, cursor, printer, early)
    finally:
        sub.close(linger=0)
    sys.stdout.flush()


def _lookup(client: Client, session: str | None) -> p.StatusReply:
    reply = client.call(p.Status(session=session))
    if isinstance(reply, p.Error):
        raise Refused(reply)
    return reply


def watch(client: Client, events_ep: str, session: str | None, since: int, until_done: bool,
          as_json: bool, only: Filter | None = None) -> int:
    """Print events (history, then live) until interrupted or, with ``until_done``, the session ends.

    A SESSION is looked up first (``Status``): an unknown one raises
    ``Refused`` (``not_found``).  ``until_done`` needs a SESSION (the caller
    checks).  Returns the exit code: 0, or with ``until_done`` 0 when the
    session ended ``done`` and 1 when it ended otherwise (one line on stderr
    says how), after printing every event up to its end.  ``only`` picks
    the events printed (all of them by default); the end is noticed also
    when its event is not printed.  A session that ended ``done`` gets one
    line on stderr (human output) with its cost and how to take its result.

    Usage lines of rehearsal sessions say their cost is not billed: the
    sessions known at the start (``Status``) and those submitted while
    watching (``session.submitted{rehearse}``) are told apart.
    """
    from orchctl import render
    known = _lookup(client, session).sessions
    initial = known[0] if session is not None else None
    printer = _Printer(as_json, session if until_done else None, only,
                       rehearsals={s.id for s in known if s.rehearse})
    _stream(client, events_ep, session, since, printer, initial)
    if not until_done:
        return 0  # not reached: without --until-done a watch ends by a signal or an error
    state, reason = (printer.ended.state, printer.ended.reason) if printer.ended else (initial.state, initial.reason)
    if state == "done":
        if not as_json:
            final = _lookup(client, session).sessions[0]
            print(f"orchctl: {render.ended_line(final)}", file=sys.stderr)
        return 0
    print(f"orchctl: session {session} ended {state}" + (f": {reason}" if reason else ""), file=sys.stderr)
    return 1


LOG_KINDS = frozenset({"agent.text", "worker.log", "agent.error", "agent.result", "agent.tool_result",
                       "worker.exited", "worker.started"})
"""What ``logs`` shows: what the agents said and wrote, their tools' results, their starts and ends."""


def _log_text(ev: dict) -> str:
    """A ``logs`` line's text: the agent's own words as they are (control characters escaped), else a summary."""
    from orchctl import render
    kind = ev["kind"]
    if kind == "agent.text" and ev.get("text"):
        return render.clean(ev["text"], keep_newlines=True)
    if kind == "worker.log" and ev.get("line"):
        return render.clean(ev["line"])
    if kind == "agent.tool_result":
        return "tool " + render.summary(ev)
    return f"{kind.split('.', 1)[1]}: {render.summary(ev)}" if kind != "agent.error" else render.summary(ev)


def _log_line(ev: dict, rehearsal: bool = False) -> str:
    from orchctl import render
    return f"[{render.clean(ev.get('worker') or '-')}] {_log_text(ev)}"


def history(client: Client, session: str, worker: str | None, as_json: bool, tail: int | None = None,
            follow: bool = False, events_ep: str | None = None) -> int:
    """Print a session's agent text, tool results and stderr lines: recorded so far, or with ``follow``
    also live until the session ends (or Ctrl-C); ``tail``: only the last ``tail`` lines of the history.

    The session is looked up first (``Status``): an unknown one raises
    ``Refused`` (``not_found``); an unknown ``worker`` is an error too (exit 1,
    one line naming the session's workers).  ``follow`` uses ``watch``'s
    history-then-live cursor, so no line is lost or printed twice.
    """
    info = _lookup(client, session).sessions[0]
    names = [w.name for w in info.workers]
    if worker is not None and worker not in names:
        from orchctl import render
        valid = ", ".join(render.clean(n) for n in names) or "none yet"
        print(f"orchctl: session {session} has no worker {render.clean(worker)!r} (its workers: {valid})",
              file=sys.stderr)
        return 1
    only = Filter(workers=(worker,) if worker else (), kinds=tuple(sorted(LOG_KINDS)))
    printer = _Printer(as_json, session if follow else None, only, line=_log_line, tail=tail)
    if follow:
        _stream(client, events_ep, session, 0, printer, info)
        return 0
    cursor = Cursor(0, by_session=True)
    _fetch(client, session, cursor, printer)
    printer.end_of_history()
    sys.stdout.flush()
    return 0
