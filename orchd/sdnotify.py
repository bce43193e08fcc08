"""sd_notify without a dependency: tell systemd how the daemon is doing.

The protocol is one datagram of newline-separated ``KEY=VALUE`` lines sent
to the ``AF_UNIX`` datagram socket named by ``$NOTIFY_SOCKET``; a name that
starts with ``@`` is in the abstract namespace (a NUL byte first).  orchd
sends ``READY=1`` once every actor reported ready, ``STATUS=<one line>``
when its summary changes, ``WATCHDOG=1`` while its actors answer a liveness
ping (``orchd.watchdog``), ``RELOADING=1`` / ``READY=1`` around a config
reload and ``STOPPING=1`` on shutdown.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op.  A send that
fails is logged once and never stops the daemon: systemd's watchdog is what
notices a daemon that cannot tell it anything.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from orchd import log

_log = log.get("orchd.sdnotify")

ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
"""Read once at start and removed from the environment, so agent processes do not inherit them."""


def address(value: str) -> str | bytes | None:
    """The socket address of a ``NOTIFY_SOCKET`` value (None for an unusable one)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock: and relative names are not supported


def watchdog_s(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog timeout systemd set for ``pid`` (``WatchdogSec=``), or None."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    owner = environ.get("WATCHDOG_PID")
    if usec <= 0 or (owner and owner != str(pid)):
        return None
    return usec / 1e6


class Notifier:
    """Sends sd_notify datagrams to ``$NOTIFY_SOCKET`` (or nowhere)."""

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_s = watchdog_s(env, os.getpid() if pid is None else pid)
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """One datagram of ``fields``; True if it was sent."""
        if self.address is None:
            return False
        data = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(data, self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                _log.warning("sd_notify_failed", error=str(exc), fields=",".join(f.split("=")[0] for f in fields))
            return False
        self._failed = False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def status_line(sessions: Mapping[str, int], workers: Mapping[str, int], waiting: int) -> str:
    """The one-line ``STATUS=``: sessions running, agents running, sessions waiting for an answer."""
    running = sessions.get("running", 0)
    agents = sum(n for key, n in workers.items() if key.endswith("/running"))
    paused = sessions.get("paused", 0)
    line = f"{running} session{'s' * (running != 1)} running, {agents} agent{'s' * (agents != 1)} running"
    if paused:
        line += f", {paused} paused"
    return line + f", {waiting} waiting for an answer"
