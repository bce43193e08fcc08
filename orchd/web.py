"""The HTTP bridge of the web dashboard: one more client of the daemon's public sockets.

Theory of operation
-------------------
The bridge holds two ZeroMQ sockets, made in ``orchd.bus`` and driven by
``orchd.web_link``: a DEALER to the control socket (``ControlLink``: many
requests in flight, each matched to its reply by id, each with a deadline)
and, while at least one browser streams events, a SUB to the events socket
(``Hub``).  It runs inside the daemon (``orchd run --http HOST:PORT``) or as
its own process (``orchd web``); either way it knows nothing the public
sockets do not say.  Inside the daemon this module is imported only when the
first connection arrives (``orchd.web_listen``: the port is bound at start).

Events reach a browser by Server-Sent Events.  Each SSE client has its own
``orchctl.cursor.Cursor`` (the sans-I/O history-then-live merge that
``orchctl watch`` uses) and its own bounded queue.  The first SSE client
makes the hub connect its SUB and sync it (``Sync`` → ``~sync <token>``);
every client registers (``Hub.join``) and waits until the SUB is synced
before its cursor reads the log.  So it misses no event: everything logged
before its last read of the log is in what it read (``Replay`` from
``Last-Event-ID``), and everything committed after is published after the
sync and reaches its queue (or, if the PUB dropped it, shows as a gap that
the cursor repairs from the log).  A little after the last client leaves
the hub closes the SUB, so a daemon nobody watches handles each event once.
Every SSE message carries ``id: <seq>``; the cursor hands out only rising
seqs, so a browser that reconnects with ``Last-Event-ID`` gets no gap and no
duplicate.  The page, the snapshot (its ``seq`` comes from ``Ping`` when no
SUB is open) and ``/metrics`` never need the SUB.

The hub never waits for a client: it appends to the client's queue, and a
full queue (the browser stopped reading and the kernel's send buffer is full)
drops that client at once, aborting its connection.  Its browser reconnects
and resumes from ``Last-Event-ID``; the daemon and the other clients never
notice.

Who may ask what is decided in ``orchd.web_auth`` (Host, Origin, token).
Every response carries a Content-Security-Policy that allows only the
bridge's own scripts, styles and connections, no inline script.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import sys
from pathlib import Path

import msgspec
from aiohttp import web

from orchctl.cursor import Cursor, Item
from orchd import bus, log, metrics, protocol as p, wire
from orchd.web_auth import Policy
from orchd.web_link import CALL_TIMEOUT_S, SYNC_DEADLINE_S, ControlLink, DaemonTimeout, Hub, SseClient, event_item
from orchd.web_diff import session_diff
from orchd.web_listen import Listener

_log = log.get("orchd.web")

def _web_dir() -> Path:
    """The page: ``web/`` beside the packages (a checkout, an editable install), else where
    ``pip install`` put it (``<prefix>/share/orchd/web``, pyproject's data-files)."""
    beside = Path(__file__).resolve().parent.parent / "web"
    if (beside / "index.html").is_file():
        return beside
    return Path(sys.prefix) / "share" / "orchd" / "web"


WEB_DIR = _web_dir()
STATIC = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
          "/style.css": ("style.css", "text/css")}
IDLE_S = 2.0             # no live event for this long: read the log's tail (a dropped tail) and send a keepalive
PAGE = 2000              # events per Replay page sent to one SSE client
SSE_SNDBUF_BYTES = 128 * 1024  # the kernel's send buffer per SSE connection: what a frozen browser can hold up
MAX_BODY_BYTES = 4 * 1024 * 1024
RETRY_MAX_S = 30.0       # ``orchd web`` waits at most this long between attempts to reach the daemon
REVIEWED_SESSIONS = 50   # the snapshot carries the reviews of the most recent sessions

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}

HTTP_STATUS = {p.ErrorCode.NOT_FOUND: 404, p.ErrorCode.BAD_STATE: 409, p.ErrorCode.INVALID: 400,
               p.ErrorCode.BAD_REQUEST: 400, p.ErrorCode.BAD_JSON: 400, p.ErrorCode.TOO_LARGE: 413,
               p.ErrorCode.UNKNOWN_KIND: 400}
ACTIONS = {"pause": p.Pause, "resume": p.Resume, "stop": p.Stop, "review": p.Review}


def _json(data, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


def _error(status: int, code: str, detail: str) -> web.Response:
    return _json({"error": {"code": code, "detail": detail}}, status)


def _reply(reply: p.ControlReply) -> web.Response:
    if isinstance(reply, p.Error):
        return _error(HTTP_STATUS.get(reply.code, 502), reply.code, reply.detail)
    return _json(msgspec.to_builtins(reply))


class Bridge:
    """The HTTP server: routes, security headers, auth; ``run`` serves until cancelled."""

    def __init__(self, ctx, control: str, events: str, state_dir: Path, runtime_dir: Path | None,
                 host: str, port: int, curve=None) -> None:
        self.ctx = ctx
        self.curve = curve  # orchd.keys.ClientCurve: a remote daemon's tcp endpoints, over CURVE
        self.control, self.events = control, events
        self.state_dir, self.runtime_dir = state_dir, runtime_dir
        self.host, self.port = host, port
        self.policy: Policy | None = None
        self.link: ControlLink | None = None
        self.hub: Hub | None = None
        self._submitted: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self.url = ""

    # ------------------------------------------------------------ lifecycle

    async def run(self, ready: asyncio.Event | None = None, listener: Listener | None = None) -> None:
        """Serve until cancelled (or a reader's bug).  ``listener``: sockets bound already (``orchd run``,
        see ``orchd.web_listen``); without one (``orchd web``), reach the daemon first, then bind."""
        self.link = ControlLink(self.ctx, self.control, curve=self.curve)
        self.hub = Hub(self.ctx, self.events, self.link, curve=self.curve)
        readers = [asyncio.ensure_future(self.link.run()), asyncio.ensure_future(self.hub.run())]
        runner = None
        own = listener is None
        try:
            if own:
                await self.link.call(p.Ping(), timeout_s=SYNC_DEADLINE_S)  # DaemonTimeout: the caller retries
                listener = Listener(self.host, self.port, self.state_dir, self.runtime_dir)
                try:
                    listener.open()
                except OSError as exc:
                    _log.error("http_bind_failed", listen=f"{self.host}:{self.port}",
                               error=exc.strerror or str(exc))
                    return
            runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            for sock in listener.socks:
                await web.SockSite(runner, sock).start()
            self.policy = Policy(self.host, listener.port, listener.token)
            self.url = listener.url
            if ready is not None:
                ready.set()
            done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a reader's bug ends the bridge (its supervisor decides what next)
        finally:
            for task in readers:
                task.cancel()
            await asyncio.wait(readers)
            for client in list(self.hub.clients):
                if client.request.transport is not None:
                    client.request.transport.abort()
            if runner is not None:
                await runner.cleanup()
            if own and listener is not None:
                listener.close()
            self.hub.close()
            self.link.close()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY_BYTES)
        app.on_response_prepare.append(_security_headers)
        r = app.router
        for path in STATIC:
            r.add_get(path, self.static)
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/api/snapshot", self.snapshot)
        r.add_get("/api/events", self.sse)
        r.add_get("/api/sessions/{sid}/diff", self.diff)
        r.add_post("/api/sessions", self.submit)
        r.add_post("/api/sessions/{sid}/{action}", self.act)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        if self.policy is None:
            return _error(503, "starting", "the bridge is starting")
        refused = self.policy.check(request.method, request.path, request.headers.get("Host"),
                                    request.headers.get("Origin"), request.headers.get("Authorization"),
                                    request.query.get("token"))
        if refused is not None:
            status, reason = refused
            metrics.http_refused.labels(reason).inc()
            _log.warning("http_refused", reason=reason, method=request.method, path=request.path,
                         peer=request.remote)
            return _error(status, reason, {"no_token": "this needs Authorization: Bearer <token> "
                                           "(orchctl web --json prints it)",
                                           "bad_token": "wrong token",
                                           "cross_origin": "cross-origin requests are refused",
                                           "bad_host": "the Host header does not name this bridge"}[reason])
        try:
            return await handler(request)
        except DaemonTimeout as exc:
            return _error(504, "timeout", str(exc))

    # ------------------------------------------------------------ routes

    async def static(self, request: web.Request) -> web.Response:
        name, ctype = STATIC[request.path]
        return web.Response(body=(WEB_DIR / name).read_bytes(), content_type=ctype,
                            headers={"Cache-Control": "no-cache"})

    async def healthz(self, request: web.Request) -> web.Response:
        try:
            reply = await self.link.call(p.Ping(), timeout_s=2.0)
        except DaemonTimeout as exc:
            return _json({"ok": False, "daemon": str(exc)}, 503)
        return _json({"ok": True, "seq": self.hub.learn(reply),
                      "log_error": getattr(reply, "log_error", None)})

    async def metrics(self, request: web.Request) -> web.Response:
        expo = metrics.exposition()
        return web.Response(body=expo.generate_latest(metrics.REGISTRY),
                            headers={"Content-Type": expo.CONTENT_TYPE_LATEST})

    async def snapshot(self, request: web.Request) -> web.Response:
        """``GET /api/snapshot``: what ``status`` says, and ``seq``: every event up to it is reflected."""
        seq = await self.hub.seq()
        reply = await self.link.call(p.Status())
        if isinstance(reply, p.Error):
            return _reply(reply)
        sessions = msgspec.to_builtins(reply.sessions)
        budgets = []
        for s in sessions:
            sub = await self._submitted_event(s["id"])
            ws = s.get("workers", [])
            costs = [w["cost_usd"] for w in ws if w.get("cost_usd") is not None]
            budgets.append({"session": s["id"], "limits": (sub or {}).get("limits", {}),
                            "input_tokens": sum(w.get("input_tokens", 0) for w in ws),
                            "output_tokens": sum(w.get("output_tokens", 0) for w in ws),
                            "cost_usd": sum(costs) if costs else None})
        out = {"seq": seq, "sessions": sessions, "budgets": budgets, "log_error": reply.log_error}
        reviews = getattr(p, "Reviews", None)  # the review actor's request: served when the daemon has it
        if reviews is not None:
            out["reviews"] = {}
            for s in sessions[-REVIEWED_SESSIONS:]:
                r = await self.link.call(reviews(session=s["id"]))
                if not isinstance(r, p.Error):
                    out["reviews"][s["id"]] = msgspec.to_builtins(r.reviews)
        return _json(out)

    async def _submitted_event(self, sid: str) -> dict | None:
        """The session's ``session.submitted`` event (its first; never changes, so cached)."""
        if sid in self._submitted:
            return self._submitted[sid]
        reply = await self.link.call(p.Replay(since=0, session=sid, limit=1))
        if not isinstance(reply, p.ReplayReply) or not reply.events:
            return None
        ev = json.loads(bytes(reply.events[0]))
        if ev.get("kind") != "session.submitted":
            return None
        self._submitted[sid] = ev
        while len(self._submitted) > 1000:
            self._submitted.popitem(last=False)
        return ev

    async def sse(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/events[?session=ID][&since=SEQ]``: history from ``Last-Event-ID`` (or ``since``), then live."""
        session = request.query.get("session") or None
        raw_since = request.headers.get("Last-Event-ID") or request.query.get("since") or "0"
        if not raw_since.isdigit() or int(raw_since) > 2**63 - 1:
            return _error(400, p.ErrorCode.INVALID, f"Last-Event-ID / since must be a seq, not {raw_since[:40]!r}")
        since = int(raw_since)
        if session is not None:
            reply = await self.link.call(p.Status(session=session))
            if isinstance(reply, p.Error):
                return _reply(reply)
        client = SseClient(session, request)
        await self.hub.join(client)  # the SUB is live from here on (DaemonTimeout: a 504, nothing streamed)
        metrics.http_sse_clients.inc()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        cursor = Cursor(since, by_session=session is not None)
        try:
            await resp.prepare(request)
            sock = request.transport.get_extra_info("socket") if request.transport else None
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SSE_SNDBUF_BYTES)
            await resp.write(b"retry: 1000\n\n")
            while not client.dropped:
                while (s := cursor.next_fetch()) is not None:
                    reply = await self.link.call(p.Replay(since=s, session=session, limit=PAGE))
                    if isinstance(reply, p.Error):
                        await resp.write(b"event: error\ndata: " + msgspec.json.encode(reply.detail) + b"\n\n")
                        return resp
                    await _send(resp, cursor.page([event_item(bytes(raw)) for raw in reply.events], reply.more))
                try:
                    await asyncio.wait_for(client.wake.wait(), IDLE_S)
                except TimeoutError:
                    cursor.idle()
                    await resp.write(b": idle\n\n")
                    continue
                out: list[Item] = []
                for it in client.take():
                    out += cursor.live(it)
                await _send(resp, out)
        except (ConnectionResetError, DaemonTimeout):
            pass  # the browser went away (or we dropped it), or the daemon is busy: it reconnects
        finally:
            self.hub.leave(client)
            metrics.http_sse_clients.dec()
        return resp

    async def diff(self, request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        reply = await self.link.call(p.Status(session=sid))
        if isinstance(reply, p.Error):
            return _reply(reply)
        session = msgspec.to_builtins(reply.sessions[0])
        sub = await self._submitted_event(sid)
        d = await asyncio.to_thread(session_diff, session, (sub or {}).get("base_commit"))
        return _json(msgspec.to_builtins(d))

    async def submit(self, request: web.Request) -> web.Response:
        """``POST /api/sessions`` with the ``submit`` request's fields as JSON (``target``, ``task``, ``plan``...)."""
        return await self._forward(request, p.Submit, {})

    async def act(self, request: web.Request) -> web.Response:
        """``POST /api/sessions/ID/{pause,resume,stop,review,answer}`` (answer: ``{"text": ...}``)."""
        sid, action = request.match_info["sid"], request.match_info["action"]
        if action == "answer":
            return await self._forward(request, p.Answer, {"session": sid})
        if action not in ACTIONS:
            return _error(404, p.ErrorCode.NOT_FOUND, f"no action {action!r} (pause, resume, stop, review, answer)")
        return _reply(await self.link.call(ACTIONS[action](session=sid)))

    async def _forward(self, request: web.Request, typ: type[p.Req], fixed: dict) -> web.Response:
        """Check a JSON body as the daemon would (``wire.decode_request``) and for unknown keys, then send it."""
        raw = await request.read()
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, p.ErrorCode.BAD_JSON, f"the body is not JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, p.ErrorCode.INVALID, "the body must be a JSON object")
        unknown = sorted(set(body) - set(typ.__struct_fields__))
        if unknown:
            return _error(400, p.ErrorCode.INVALID, f"unknown field {unknown[0]!r} (known: "
                          f"{', '.join(f for f in typ.__struct_fields__ if f not in fixed)})")
        kind = typ.__struct_config__.tag
        envelope = {"v": p.VERSION, "id": "web", "body": {**body, **fixed, "kind": kind}}
        try:
            req = wire.decode_request(json.dumps(envelope).encode(), MAX_BODY_BYTES)
        except wire.WireError as exc:
            return _error(HTTP_STATUS.get(exc.code, 400), exc.code, exc.detail)
        return _reply(await self.link.call(req.body, timeout_s=60.0 if kind == "submit" else CALL_TIMEOUT_S))


async def _send(resp: web.StreamResponse, items: list[Item]) -> None:
    if items:
        await resp.write(b"".join(b"id: %d\ndata: %s\n\n" % (it.seq, it.data[0]) for it in items))


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


async def serve_standalone(cfg, host: str, port: int, remote=None) -> int:
    """``orchd web``: the bridge in its own process, until SIGTERM/SIGINT.

    ``remote`` (``orchctl.profiles.Remote``): a daemon on another machine,
    reached over CURVE at its tcp endpoints; no ``web.json`` is written then
    (the local runtime dir belongs to a local daemon, if any): the URL and the
    token file are in the ``http_listening`` log line.
    """
    import signal
    ctx = bus.context()
    if remote is None:
        bridge = Bridge(ctx, cfg.control(), cfg.events(), cfg.state_dir, cfg.runtime_dir, host, port)
    else:
        bridge = Bridge(ctx, remote.control, remote.events, cfg.state_dir, None, host, port, curve=remote.curve)

    async def until_stopped() -> None:
        retry_s = 1.0
        while True:
            try:
                await bridge.run()
                return  # it could not bind: said in the log
            except DaemonTimeout as exc:
                _log.warning("daemon_not_answering", error=str(exc), retry_s=retry_s)
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, RETRY_MAX_S)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task, waiter = asyncio.ensure_future(until_stopped()), asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # a bug in the bridge: its traceback, exit 1
            return 1       # it could not listen (said in the log)
        return 0
    finally:
        task.cancel()
        waiter.cancel()
        await asyncio.wait({task, waiter})
        ctx.destroy(linger=0)
