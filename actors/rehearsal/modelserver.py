"""A scripted model server so the real agent CLIs run offline, spending no tokens.

Theory of operation
-------------------
One HTTP server on loopback speaks three dialects, chosen by path:

* Anthropic Messages (claude): ``HEAD /`` preflight, ``POST /v1/messages``;
* OpenAI Responses (codex): ``POST /v1/responses``;
* Gemini v1beta (gemini): ``POST /v1beta/models/<m>:generateContent`` and
  ``:streamGenerateContent?alt=sse``.

Every request is first read into a ``Turn`` (dialect, the conversation's
prompt text, the assignment name, the agent's cwd, the tools offered).  The
``Script`` then picks the reply for that turn from the scenario; the dialect
module renders the reply as that API's native stream.  Only this file's
``_Handler`` touches sockets; ``Script`` and the renderers are pure.

Requests that ask for structured JSON output (claude's session-title call,
gemini's model router) are *side calls*: the CLI makes them on its own, so
they get an answer synthesised from the requested JSON schema and never
consume a scripted reply.

A conversation is keyed by dialect plus the assignment name found in the
prompt (``orchd-assignment: NAME``), so several agents can share one server.
The same name picks the scenario's ``assignments.NAME`` list when it has
one, else the agent's list (``agents.<agent>``, then ``agents.*``).
Each model call of a conversation takes the next matching reply; after a tool
call the CLI calls again with the tool result, which takes the reply after
it.  When the list runs out the answer is ``DONE: {assignment}``.

The scenario format (and its validator) is ``actors.rehearsal.scenario``,
documented in ``docs/scenarios.md``.
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from actors.rehearsal import dialects
from actors.rehearsal.scenario import ScenarioError, default_scenario, load_scenario, validate_scenario

SECRET_HEADERS = frozenset({"x-api-key", "authorization", "x-goog-api-key", "cookie", "proxy-authorization"})


# ---------------------------------------------------------------- the script (pure)

@dataclass
class Script:
    """Picks each conversation's next reply; thread-safe, no I/O."""

    scenario: dict[str, Any]
    _consumed: dict[tuple[str, str, str], set[int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_reply(self, turn: dialects.Turn) -> dict[str, Any]:
        """The reply for this model call, with ``{assignment}`` filled in.

        The assignment's own replies (``"assignments": {NAME: [...]}``) when the scenario has
        them, else the agent's.  A reviewer's call (its prompt has ``orchd-review: NAME round N``)
        takes only review replies (a ``json`` reply, or one whose ``match`` names
        ``orchd-review``) and when none is left gets an approval; other calls never take a
        review reply.  A ``json`` reply is sent as the assistant's text: the JSON answer
        claude's ``--json-schema`` and codex's ``--output-schema`` modes expect, and what a CLI
        without such a mode is asked for.
        """
        own = self.scenario.get("assignments", {})
        if turn.assignment is not None and turn.assignment in own:
            replies, source = own[turn.assignment], "assignment"
        else:
            agents = self.scenario.get("agents", {})
            replies, source = agents.get(turn.agent, agents.get("*", [])), "agent"
        review = REVIEW_RE.search(turn.prompt)
        key = (source, turn.agent, f"review:{review.group(1)}" if review else turn.assignment or "")
        with self._lock:
            used = self._consumed.setdefault(key, set())
            for i, reply in enumerate(replies):
                if i in used or _is_review_reply(reply) != bool(review):
                    continue
                if "match" in reply and reply["match"] not in turn.prompt:
                    continue
                used.add(i)
                return _as_text(_fill(reply, turn.name))
        if review:
            return _as_text({"json": REHEARSAL_APPROVAL})
        return {"text": f"DONE: {turn.name}"}


REVIEW_RE = __import__("re").compile(r"orchd-review: (\S+) round \d+")
REHEARSAL_APPROVAL = {"verdict": "approve", "summary": "rehearsal: no review reply scripted for this reviewer",
                      "findings": []}


def _is_review_reply(reply: dict[str, Any]) -> bool:
    return "json" in reply or "orchd-review" in str(reply.get("match", ""))


def _as_text(reply: dict[str, Any]) -> dict[str, Any]:
    if "json" not in reply:
        return reply
    return {"text": json.dumps(reply["json"])}


def _fill(value: Any, name: str) -> Any:
    """Replace ``{assignment}`` in every string of a reply (not str.format:
    scenario text may hold other braces, e.g. code)."""
    if isinstance(value, str):
        return value.replace("{assignment}", name)
    if isinstance(value, dict):
        return {k: _fill(v, name) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, name) for v in value]
    return value


# ---------------------------------------------------------------- HTTP

@dataclass(frozen=True)
class ServerStatistics:
    """A snapshot of the server's counters (see ``ModelServer.statistics``)."""

    requests: int   # requests received, side calls and bad ones included
    stalled: int    # requests being held open right now by a stall reply


class _Server(ThreadingHTTPServer):
    # One daemon thread per connection (so a forgotten server never blocks
    # interpreter exit), yet close() joins them all: no request outlives the
    # server.  The join is bounded because close() first sets `stopping`
    # (stalls watch it) and shuts down every live connection (idle keep-alive
    # reads return EOF).
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], script: Script, log_path: Path | None,
                 key: str | None = None) -> None:
        super().__init__(addr, _Handler)
        self.script = script
        self.key = key
        self.stopping = threading.Event()
        self.log_path = log_path
        self.log_lock = threading.Lock()
        self.records: list[dict[str, Any]] = []
        self.stalled = 0
        # guards records and stalled; notified on every change so tests can wait on conditions
        self.records_changed = threading.Condition()
        self._live: dict[socket.socket, threading.Thread] = {}
        self._live_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(target=self.process_request_thread, args=(request, client_address), daemon=True)
        with self._live_lock:
            self._live[request] = t
        t.start()

    def shutdown_request(self, request: Any) -> None:
        with self._live_lock:
            self._live.pop(request, None)
        super().shutdown_request(request)

    def close(self) -> None:
        """Release stalls, hang up on every client, join the handler threads."""
        self.stopping.set()
        with self._live_lock:
            live = list(self._live.items())
        for sock, _ in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its handler: nothing to release
        for _, thread in live:
            thread.join()
        self.server_close()

    def statistics(self) -> ServerStatistics:
        with self.records_changed:
            return ServerStatistics(requests=len(self.records), stalled=self.stalled)

    def add_stalled(self, delta: int) -> None:
        with self.records_changed:
            self.stalled += delta
            self.records_changed.notify_all()

    def record(self, entry: dict[str, Any]) -> None:
        with self.log_lock:
            if self.log_path is not None:
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(entry) + "\n")
        with self.records_changed:
            self.records.append(entry)
            self.records_changed.notify_all()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: the CLIs reuse connections

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the JSONL request log replaces stderr access lines

    def _presented_key(self) -> str | None:
        h = self.headers
        auth = h.get("authorization") or ""
        return h.get("x-api-key") or h.get("x-goog-api-key") or (auth[7:] if auth.lower().startswith("bearer ") else None)

    def do_HEAD(self) -> None:
        # claude's connectivity preflight is HEAD /.
        self._log(None, None)
        self.send_response(200 if self.path == "/" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._log(None, None)
        if self.path == "/":
            self._send_json(200, {"ok": True, "server": "orchd-modelserver"})
        else:
            self._send_json(404, {"error": {"message": f"no route for GET {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("body is not a JSON object")
        except ValueError as e:  # the peer misbehaved: answer 400 and keep serving
            self._log(raw.decode("utf-8", "replace"), {"error": f"bad json: {e}"})
            self._send_json(400, {"error": {"code": 400, "message": f"invalid JSON body: {e}"}})
            return
        if self.server.key is not None and self._presented_key() != self.server.key:
            # a CLI of another run (e.g. one retrying a port this server now holds) must not
            # consume this scenario's replies
            self._log(body, {"error": "wrong key"})
            self._send_json(401, {"error": {"code": 401, "message": "API key not valid for this rehearsal server",
                                            "type": "authentication_error"}})
            return
        route = dialects.route(self.path)
        if route is None:
            self._log(body, {"error": "no route"})
            self._send_json(404, {"error": {"code": 404, "message": f"no route for POST {self.path}"}})
            return
        try:
            turn = dialects.read_turn(route, self.path, body)
        except dialects.BadRequest as e:
            self._log(body, {"error": str(e)})
            self._send_json(400, {"error": {"code": 400, "message": str(e)}})
            return
        if turn.side_call:
            self._log(body, {"side_call": True, "agent": turn.agent})
            self._send_reply(route, turn, dialects.side_reply(turn))
            return
        reply = self.server.script.next_reply(turn)
        self._log(body, {"agent": turn.agent, "assignment": turn.assignment, "reply": reply})
        if reply.get("stall"):
            self._stall()
        elif "http_error" in reply:
            status = int(reply["http_error"])
            self._send_json(status, reply.get("body") or dialects.error_body(route, status))
        elif "usage_limit" in reply:
            self._send_json(429, dialects.usage_limit_body(route, time.time(), float(reply["usage_limit"])))
        else:
            self._send_reply(route, turn, reply)

    # -- helpers

    def _send_reply(self, route: str, turn: dialects.Turn, reply: dict[str, Any]) -> None:
        if not turn.stream:
            self._send_json(200, dialects.render_json(route, turn, reply))
            return
        payload = "".join(dialects.render_sse(route, turn, reply)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stall(self) -> None:
        """Answer nothing until the client hangs up or the server stops."""
        sock = self.connection
        self.server.add_stalled(1)
        try:
            while not self.server.stopping.is_set():
                readable, _, _ = select.select([sock], [], [], 0.05)
                if readable:
                    try:
                        if sock.recv(1, socket.MSG_PEEK) == b"":
                            break  # the client went away
                    except OSError:
                        break
        finally:
            self.server.add_stalled(-1)
        self.close_connection = True

    def _log(self, body: Any, outcome: dict[str, Any] | None) -> None:
        headers = {k: ("<redacted>" if k.lower() in SECRET_HEADERS else v) for k, v in self.headers.items()}
        entry = {"ts": time.time(), "method": self.command, "path": self.path, "headers": headers, "body": body}
        if outcome:
            entry.update(outcome)
        self.server.record(entry)


class ModelServer:
    """The scripted server in a background thread, on a free loopback port.

    >>> with ModelServer(None) as srv:   # the default scenario
    ...     env = {"ANTHROPIC_BASE_URL": srv.url}
    """

    def __init__(self, scenario: dict[str, Any] | None = None, log_path: str | Path | None = None,
                 host: str = "127.0.0.1", port: int = 0, key: str | None = None) -> None:
        """``key``: when set, requests presenting another API key get 401."""
        scenario = default_scenario() if scenario is None else scenario
        validate_scenario(scenario)
        self.key = key
        self._server = _Server((host, port), Script(scenario), Path(log_path) if log_path else None, key)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """A snapshot of every request received so far (as logged)."""
        with self._server.records_changed:
            return list(self._server.records)

    def statistics(self) -> ServerStatistics:
        return self._server.statistics()

    def wait_for(self, predicate: Callable[[ServerStatistics], bool], timeout_s: float) -> ServerStatistics:
        """Block until ``predicate(statistics)`` holds; TimeoutError past the deadline."""
        cond = self._server.records_changed
        with cond:
            if not cond.wait_for(lambda: predicate(self._server.statistics()), timeout_s):
                raise TimeoutError(f"condition not met after {timeout_s}s: {self._server.statistics()}")
            return self._server.statistics()

    def wait_for_requests(self, n: int, timeout_s: float) -> list[dict[str, Any]]:
        """Block until at least ``n`` requests arrived; TimeoutError past the deadline."""
        self.wait_for(lambda st: st.requests >= n, timeout_s)
        return self.requests

    def start(self) -> ModelServer:
        # a short poll interval keeps stop() fast: shutdown() waits for the next poll
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="modelserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release stalled requests, join the handler threads."""
        self._server.stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.close()

    def serve_forever(self) -> None:
        self._server.serve_forever(0.05)

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m actors.rehearsal.modelserver", description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", help="scenario file (.json or .toml); default: the packaged default")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log", help="append every request received as JSONL to this file")
    args = ap.parse_args(argv)
    try:
        scenario = load_scenario(args.scenario) if args.scenario else None
    except ScenarioError as exc:
        print(f"modelserver: bad scenario {args.scenario}: {exc}", file=sys.stderr)
        return 2
    server = ModelServer(scenario, log_path=args.log, host=args.host, port=args.port)

    # SIGTERM ends serve_forever from the main thread; shutdown() must run elsewhere.
    def on_term(signum: int, frame: object) -> None:
        server._server.stopping.set()
        threading.Thread(target=server._server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    print(json.dumps({"url": server.url}), flush=True)
    try:
        server.serve_forever()
    finally:
        server._server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
