"""A plain HTTP and Server-Sent Events client for the bridge tests (stdlib only: the client side
of a real HTTP connection on 127.0.0.1, no part of orchd)."""

from __future__ import annotations

import http.client
import json
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from tests.conftest import wait_for


@dataclass
class Web:
    url: str
    token: str

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname

    @property
    def port(self) -> int:
        return urlsplit(self.url).port

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None,
                token: str | None = "default") -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        hdrs = dict(headers or {})
        if token == "default":
            token = self.token
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: dict | None = None, **kw):
        status, _, data = self.request(method, path, body, **kw)
        return status, json.loads(data)

    def metrics(self) -> str:
        return self.request("GET", "/metrics")[2].decode()

    def counter(self, name: str, **labels) -> float:
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in self.metrics().splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0


def web_of(daemon) -> Web:
    info = wait_for(lambda: (r := daemon.ctl("web", "--json", check=False)).returncode == 0 and json.loads(r.stdout),
                    30, "the web bridge to listen")
    return Web(info["url"], info["token"])


class Sse:
    """One SSE stream (HTTP/1.0, so unchunked) read line by line: ``next()`` is one (id, event)."""

    def __init__(self, web: Web, path: str, last_event_id: int | None = None, timeout_s: float = 30) -> None:
        self.sock = socket.create_connection((web.host, web.port), timeout=timeout_s)
        headers = f"GET {path} HTTP/1.0\r\nHost: {web.host}:{web.port}\r\nAccept: text/event-stream\r\n"
        if last_event_id is not None:
            headers += f"Last-Event-ID: {last_event_id}\r\n"
        self.sock.sendall((headers + "\r\n").encode())
        self.fh = self.sock.makefile("rb")
        status = self.fh.readline()
        assert b" 200 " in status, status
        while self.fh.readline() not in (b"\r\n", b""):
            pass

    def _line(self) -> bytes:
        return self.fh.readline()  # HTTP/1.0: the body is not chunked, it ends when the server closes

    def next(self) -> tuple[int, dict]:
        ev_id, data = None, None
        while True:
            line = self._line()
            if line == b"" or not line.endswith(b"\n"):
                # a client the bridge drops (too slow) may get its last line cut off by the close
                raise EOFError("the stream ended")
            line = line.rstrip(b"\r\n")
            if line.startswith(b"id: "):
                ev_id = int(line[4:])
            elif line.startswith(b"data: "):
                data = json.loads(line[6:])
            elif line == b"" and data is not None:
                return ev_id, data

    def until(self, pred, timeout_s: float = 60) -> list[tuple[int, dict]]:
        out = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            item = self.next()
            out.append(item)
            if pred(item[1]):
                return out
        raise AssertionError("timed out reading the SSE stream")

    def close(self) -> None:
        self.fh.close()
        self.sock.close()


class Browserlike:
    """An SSE reader that reconnects with ``Last-Event-ID`` when its stream ends, as ``EventSource`` does."""

    def __init__(self, web: Web, path: str) -> None:
        self.web, self.path = web, path
        self.last: int | None = None
        self.reconnects = 0
        self.stream = Sse(web, path)

    def until(self, pred, timeout_s: float = 60) -> list[tuple[int, dict]]:
        out = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                item = self.stream.next()
            except (EOFError, ConnectionResetError):
                self.stream.close()
                self.reconnects += 1
                self.stream = Sse(self.web, self.path, last_event_id=self.last)
                continue
            self.last = item[0]
            out.append(item)
            if pred(item[1]):
                return out
        raise AssertionError("timed out reading the SSE stream")

    def close(self) -> None:
        self.stream.close()
