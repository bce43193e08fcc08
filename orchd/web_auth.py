"""Who may use the HTTP bridge: pure decisions (no sockets, no clock), tested alone.

Theory of operation
-------------------
The bridge serves a page to a browser, and a browser also runs pages from
other sites that may send requests to ``127.0.0.1``.  Three checks keep
them out, in this order:

* **Host.**  A DNS-rebinding page reaches the bridge under its own name
  (``evil.example:7878``), so its requests are same-origin as far as the
  browser knows.  The ``Host`` header must name the bridge itself: its bind
  address, or ``localhost`` / ``127.0.0.1`` / ``[::1]`` for a loopback bind.
  A bridge bound to every address (``0.0.0.0``) cannot know its names, so it
  accepts any ``Host`` and relies on the token.
* **Origin.**  A browser sends ``Origin`` on cross-origin requests (and on
  every POST).  When present it must be ``http://<the Host>``.
* **Token.**  Control routes (every POST) need ``Authorization: Bearer
  <token>``, compared in constant time.  On a loopback bind the read routes
  (page, snapshot, events, diff, metrics) need no token; on any other bind
  every ``/api`` route and ``/metrics`` need it too.  ``EventSource`` cannot
  send headers, so GET routes also take ``?token=``.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def parse_listen(value: str) -> tuple[str, int] | None:
    """``HOST:PORT`` → (host, port); ``off`` → None; anything else raises ``ValueError``."""
    if value.strip().lower() == "off":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("want HOST:PORT or 'off'")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Policy:
    """The bridge's bind address and token; ``check`` decides one request."""

    host: str
    port: int
    token: str

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def allowed_hosts(self) -> frozenset[str] | None:
        """The ``Host`` values accepted; None for a wildcard bind (any)."""
        if self.host in ("0.0.0.0", "::", ""):
            return None
        names = {self.host if ":" not in self.host else f"[{self.host}]"}
        if self.loopback:
            names.update(LOOPBACK_NAMES)
        return frozenset(f"{n}:{self.port}" for n in names)

    def check(self, method: str, path: str, host: str | None, origin: str | None,
              authorization: str | None, query_token: str | None) -> tuple[int, str] | None:
        """None if the request may go on, else ``(status, reason)`` (403 or 401)."""
        allowed = self.allowed_hosts()
        if allowed is not None and (host or "").lower() not in allowed:
            return 403, "bad_host"
        if origin is not None and origin != f"http://{host}":
            return 403, "cross_origin"
        if not self.needs_token(method, path):
            return None
        given = None
        if authorization and authorization.startswith("Bearer "):
            given = authorization[len("Bearer "):].strip()
        elif method == "GET" and query_token:
            given = query_token
        if not given:
            return 401, "no_token"
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return 401, "bad_token"
        return None

    def needs_token(self, method: str, path: str) -> bool:
        if method not in ("GET", "HEAD"):
            return True
        if path.startswith("/api/") or path == "/metrics":
            return not self.loopback
        return False
