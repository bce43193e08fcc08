"""The control-socket client: one DEALER, every call with a deadline.

"Not running" and "busy" are told apart at the process boundary.  A ZeroMQ
``ipc://`` endpoint is a unix stream socket, so before the first request
(and again after a deadline passes) the client connects a plain
``AF_UNIX`` socket to its path: a missing file or a refused connect means
nobody listens (``Unreachable``, exit 3, said at once); a socket this user
may not open (``EACCES``: another user's 0700 runtime dir) is "permission
denied" (also ``Unreachable``, exit 3); an accepted connect means the daemon
is there, and a deadline that passes is ``Busy`` (exit 1).
A ``tcp://`` endpoint cannot be probed that way: a short ``Ping`` comes
first, and no answer in time is ``Unreachable``.

A remote daemon (``curve``: orchctl.profiles) is reached over CURVE: the
DEALER and the SUB of ``watch`` (``subscribe``) carry this client's key pair
and the server's public key.  A socket monitor tells a refused key
(``HANDSHAKE_FAILED_AUTH``: the daemon's ZAP handler said no) from a daemon
that is not there, so the message says which.  A ``tcp://`` endpoint without
keys (``ORCHD_CONTROL_ENDPOINT``, ``ORCHD_EVENTS_ENDPOINT``) is refused at
once (``Unreachable``): no daemon serves plaintext tcp.  Both sockets are
made by ``orchd.bus``, like every other socket of orchd.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket

import zmq

from orchd import protocol as p
from orchd import wire

PROBE_TIMEOUT_S = 0.5
PERMISSION_DENIED = "permission denied"


class Unreachable(Exception):
    """Nobody listens at the control endpoint (or a tcp daemon did not answer in time)."""


class Busy(Exception):
    """The daemon's socket accepts connections, but no answer came within the deadline."""


class Refused(Exception):
    """The daemon answered with ``Error`` where a command cannot go on (exit 1)."""

    def __init__(self, error: p.Error) -> None:
        super().__init__(f"{error.detail} [{error.code}]")
        self.error = error


def probe_ipc(endpoint: str) -> str | None:
    """Whether something listens at an ``ipc://`` endpoint: None if so, else why not.

    Connects (and at once closes) a plain unix stream socket: what a ZeroMQ
    ipc endpoint is.  A full accept backlog (``EAGAIN``) or a slow kernel
    counts as "listening": somebody is there.
    """
    path = endpoint[len("ipc://"):]
    if path.startswith("@"):
        address = "\0" + path[1:]  # Linux abstract namespace, as libzmq spells it
    else:
        address = path
        try:
            os.stat(path)
        except FileNotFoundError:
            return "not running"
        except PermissionError:
            return PERMISSION_DENIED  # the runtime dir is another user's (0700)
        except OSError:
            return "not running"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(PROBE_TIMEOUT_S)
    try:
        sock.connect(address)
    except (ConnectionRefusedError, FileNotFoundError):
        return "not running"
    except PermissionError:
        return PERMISSION_DENIED
    except (BlockingIOError, TimeoutError):
        return None
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EINPROGRESS):
            return None
        return exc.strerror or str(exc)
    finally:
        sock.close()
    return None


NEEDS_KEYS = "name the daemon with --profile, or with --endpoint, --server-key and --client-key"


class Client:
    def __init__(self, control: str, timeout_s: float = 10.0, connect_timeout_s: float = 1.0,
                 curve=None) -> None:
        self.control = control
        self.curve = curve  # orchd.keys.ClientCurve, or None (ipc, or plaintext tcp that no daemon serves)
        self._monitor: zmq.Socket | None = None
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._checked = False
        self.ctx = zmq.Context.instance()
        self.sock: zmq.Socket | None = None

    def _unreachable(self, why: str) -> Unreachable:
        if why == "not running":
            return Unreachable(f"orchd is not running at {self.control}: start it with 'orchd run'")
        if why == PERMISSION_DENIED:
            return Unreachable(f"permission denied: {self.control} belongs to another user "
                               "(run orchctl as the user that runs orchd)")
        return Unreachable(f"orchd cannot be reached at {self.control}: {why}")

    def ensure_reachable(self) -> None:
        """Raise ``Unreachable`` unless a daemon listens at the control endpoint (once per client).

        ipc: a probe connect, at once.  tcp: a ``Ping`` with the short
        connect deadline, so a dead daemon is reported within 2 s even when
        the request itself may take longer to serve (``submit``).
        """
        if self._checked:
            return
        if self.control.startswith("ipc://"):
            if (why := probe_ipc(self.control)) is not None:
                raise self._unreachable(why)
            self._checked = True
        else:
            self._checked = True
            self._call(p.Ping(), self.connect_timeout_s)

    def call(self, body: p.ControlRequest, timeout_s: float | None = None) -> p.ControlReply:
        """Send one request and wait for its reply (``timeout_s``, else the client's default)."""
        self.ensure_reachable()
        return self._call(body, self.timeout_s if timeout_s is None else timeout_s)

    def _socket(self) -> zmq.Socket:
        if self.sock is None:
            from orchd import bus
            try:
                self.sock, self._monitor = bus.client_dealer(self.ctx, self.control, self.curve)
            except bus.PlaintextTcpRefused as exc:
                raise Unreachable(f"{exc}: {NEEDS_KEYS}") from None
        return self.sock

    def subscribe(self, endpoint: str, topics: list[bytes]) -> zmq.Socket:
        """A SUB to the daemon's events socket at ``endpoint`` (CURVE for a remote daemon, like the
        control socket), subscribed to ``topics``, queueing without limit; the caller closes it."""
        from orchd import bus
        try:
            return bus.events_sub(self.ctx, endpoint, 0, self.curve, topics)
        except bus.PlaintextTcpRefused as exc:
            raise Unreachable(f"{exc}: {NEEDS_KEYS}") from None

    def _key_refused(self) -> bool:
        """Whether the daemon's ZAP handler refused our key on this socket."""
        if self._monitor is None:
            return False
        from zmq.utils.monitor import recv_monitor_message
        while self._monitor.poll(0, zmq.POLLIN):
            if recv_monitor_message(self._monitor)["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                return True
        return False

    def _call(self, body: p.ControlRequest, timeout_s: float) -> p.ControlReply:
        sock = self._socket()
        rid = secrets.token_hex(6)
        # a DEALER with no peer blocks in send (a CURVE connection whose key was refused has none): wait
        # for room within the same deadline
        try:
            if not sock.poll(int(timeout_s * 1000), zmq.POLLOUT):
                raise zmq.Again()
            sock.send(wire.encode_request(body, rid), zmq.NOBLOCK)
        except zmq.Again:  # no peer to send to (or it went away between the poll and the send)
            raise self._give_up(timeout_s) from None
        while True:
            if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
                raise self._give_up(timeout_s)  # closes: a late reply must not answer the next call
            reply = wire.decode_reply(sock.recv())
            if reply.id == rid or reply.id == "":
                return reply.body

    def _give_up(self, timeout_s: float) -> Exception:
        late = self._late(timeout_s)
        self.close()
        self._checked = False
        return late

    def _late(self, timeout_s: float) -> Exception:
        """What a passed deadline means: the daemon is gone, or it is busy."""
        if self.curve is not None:
            from orchd.keys import fingerprint
            public = self.curve.client.public
            if self._key_refused():
                return Unreachable(f"orchd at {self.control} refused this client's key (fingerprint "
                                   f"{fingerprint(public)}): its operator must authorize it with "
                                   f"orchd keys add NAME '{public.decode()}'")
            return Unreachable(f"orchd did not answer at {self.control} within {timeout_s:g} s: it is not "
                               "running or not reachable, or --server-key is not its key")
        if not self.control.startswith("ipc://"):
            return self._unreachable("not running")
        if (why := probe_ipc(self.control)) is not None:
            return self._unreachable(why)
        return Busy(f"orchd at {self.control} did not answer within {timeout_s:g} s (it is running but busy)")

    def close(self) -> None:
        if self._monitor is not None:
            self.sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
