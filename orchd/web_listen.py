"""The dashboard's listening sockets, and the in-daemon bridge that is loaded on its first connection.

Theory of operation
-------------------
``orchd run`` binds the dashboard's port when it starts (``Listener.open``):
a port in use is said at start, ``web.json`` (the URL, for ``orchctl web``)
and the token exist from then on.  The bridge itself, aiohttp and
``orchd.web``, is not imported until somebody connects: ``LazyBridge.run``
waits for a listening socket to become readable (a connection is pending in
its backlog), imports the bridge in a thread (so the event loop is not held
while ~10 MB of modules load), and hands the same sockets to
``orchd.web.Bridge``, whose aiohttp server accepts that pending connection
and every later one.  A daemon nobody looks at therefore holds neither the
bridge's modules nor any of its ZeroMQ sockets.

This module must stay light: it imports nothing of aiohttp, ZeroMQ or the
bridge at module level, nor ``secrets``/``hmac``/``hashlib``, which load
OpenSSL's libcrypto (see "Idle RSS" in benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sys
from pathlib import Path

from orchd import log

_log = log.get("orchd.web")

TOKEN_FILE = "http-token"
INFO_FILE = "web.json"
BACKLOG = 128


def load_token(state_dir: Path) -> str:
    """The bridge's bearer token: made at first start, kept 0600 in the state dir."""
    path = state_dir / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if token:
            return token
        raise OSError(f"{path} is empty: remove it and a new token is made") from None
    token = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()  # secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host:port``: one per address ``host`` resolves to (``localhost``
    may be both 127.0.0.1 and ::1), as asyncio's ``create_server`` would make them; port 0
    picks one free port, shared by all of them.  Raises ``OSError`` (address in use...)."""
    # an ASCII host goes as bytes: a str one loads the idna codec (unicodedata, ~0.3 MB) for nothing
    name = (host.encode() if host.isascii() else host) if host else None
    infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, addr in infos:
            if (family, addr[:2]) in seen:
                continue
            seen.add((family, addr[:2]))
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(socks) > 1:
                addr = (addr[0], socks[0].getsockname()[1], *addr[2:])
            sock.bind(addr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class Listener:
    """The bound sockets, the URL and the token of one bridge; ``web.json`` while it is open."""

    def __init__(self, host: str, port: int, state_dir: Path, runtime_dir: Path | None) -> None:
        self.host, self.port = host, port
        self.state_dir, self.runtime_dir = state_dir, runtime_dir
        self.socks: list[socket.socket] = []
        self.token = ""
        self.url = ""

    def open(self) -> None:
        """Bind, read (or make) the token, write ``web.json``; ``OSError`` when the port cannot be had."""
        self.token = load_token(self.state_dir)
        self.socks = bind(self.host, self.port)
        self.port = self.socks[0].getsockname()[1]
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}/"
        self._write_info()
        _log.info("http_listening", url=self.url, token_file=str(self.state_dir / TOKEN_FILE))

    def close(self) -> None:
        """Close the sockets (aiohttp may have closed them already) and remove ``web.json``."""
        for sock in self.socks:
            sock.close()
        self.socks = []
        self._remove_info()

    def _write_info(self) -> None:
        if self.runtime_dir is None:
            return
        data = json.dumps({"url": self.url, "token_file": str(self.state_dir / TOKEN_FILE), "pid": os.getpid()})
        tmp = self.runtime_dir / f".{INFO_FILE}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(data + "\n")
        os.replace(tmp, self.runtime_dir / INFO_FILE)

    def _remove_info(self) -> None:
        if self.runtime_dir is None or not self.url:
            return
        path = self.runtime_dir / INFO_FILE
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass  # gone already, or another bridge's: nothing of ours to remove


async def wait_connection(socks: list[socket.socket]) -> None:
    """Return once a connection is pending on any of ``socks`` (it stays in the backlog)."""
    loop = asyncio.get_running_loop()
    pending = loop.create_future()
    for sock in socks:
        loop.add_reader(sock.fileno(), lambda: pending.done() or pending.set_result(None))
    try:
        await pending
    finally:
        for sock in socks:
            loop.remove_reader(sock.fileno())


class LazyBridge:
    """The bridge inside ``orchd run``: bound by ``open`` at start, loaded by ``run`` on demand.

    ``run`` is the child of the daemon's ``http`` supervisor.  A restart
    after a crash binds the port again (aiohttp closed the sockets) and, the
    modules being loaded by then, serves at once.
    """

    def __init__(self, ctx, control: str, events: str, state_dir: Path, runtime_dir: Path | None,
                 host: str, port: int) -> None:
        self.ctx = ctx
        self.control, self.events = control, events
        self.state_dir, self.runtime_dir = state_dir, runtime_dir
        self.host, self.port = host, port
        self._bound: Listener | None = None

    def open(self) -> bool:
        """Bind at start; False (logged, the daemon runs on without its dashboard) when it cannot."""
        self._bound = self._listen()
        return self._bound is not None

    def _listen(self) -> Listener | None:
        listener = Listener(self.host, self.port, self.state_dir, self.runtime_dir)
        try:
            listener.open()
        except OSError as exc:
            listener.close()
            _log.error("http_bind_failed", listen=f"{self.host}:{self.port}", error=exc.strerror or str(exc))
            return None
        self.port = listener.port  # a restart keeps the port port 0 picked
        return listener

    async def run(self, restarts: int = 0) -> None:
        listener, self._bound = self._bound or self._listen(), None
        if listener is None:
            return
        try:
            if "orchd.web" not in sys.modules:
                await wait_connection(listener.socks)
                _log.info("http_bridge_loading", reason="first connection")
                await asyncio.to_thread(__import__, "orchd.web")
            from orchd.web import Bridge
            bridge = Bridge(self.ctx, self.control, self.events, self.state_dir, self.runtime_dir,
                            self.host, self.port)
            await bridge.run(listener=listener)
        finally:
            listener.close()
