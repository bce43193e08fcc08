"""Every ZeroMQ socket orchd makes, made here: the daemon's, and its clients' (``orchctl``,
the HTTP bridge).

One place decides each socket's type, options and limits, so securing the
public sockets (CURVE, a ZAP handler) is a change to this module only.

Public sockets (clients connect to them):

* ``control_router``: the control ROUTER.  Frames over ``max_frame_bytes``
  are answered ``too_large`` by ``orchd.control``; frames over four times
  that drop the peer inside libzmq.  The send queue per peer is bounded so
  a client that never reads its replies costs a bounded amount of memory.
* ``events_pub``: the events PUB, with a per-subscriber queue bound.

Both bind their ipc endpoints in plaintext (the 0700 runtime dir keeps
other users out) and may ALSO bind tcp endpoints with CURVE
(``curve=ServerKeys``, ``curve_endpoints=[...]``): libzmq copies a socket's
options into each listener when it binds, so switching CURVE on after the
ipc binds secures only what is bound afterwards.  Plaintext tcp is refused
here whatever the caller asks (``_bind``): any local user could connect to
it, loopback included.  Who may connect over CURVE is the ZAP handler's call
(``orchd.zap``; ``zap_enforce_domain`` refuses every client when no handler
runs).

Internal sockets (inproc between actors; any endpoint would do):

* ``mailbox``: an actor's PULL inbox; ``push``: a PUSH to one.

Client sockets (they connect; over tcp only as CURVE clients, ``_connect``):

* ``control_dealer``: a DEALER to the control ROUTER (``client_dealer`` is
  orchctl's, with a monitor of refused CURVE handshakes);
* ``events_sub``: a SUB to the events PUB.

Every socket has ``linger = 0`` except PUSH sockets that must deliver what
was sent before their owner went away (``push(..., linger_s=...)``).

``zmq.asyncio`` (and so ``asyncio``) is imported by ``context()`` only: the
client sockets take any context, and orchctl, which uses the blocking one,
starts without asyncio.
"""

from __future__ import annotations

import errno
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import zmq

from orchd import handshakes

if TYPE_CHECKING:
    import zmq.asyncio

    from orchd.keys import ClientCurve, ClientKeys, ServerKeys

ZAP_DOMAIN = b"orchd"  # orchd.zap.DOMAIN: the domain the ZAP handler answers for
REBIND_S = 2.0  # how long a tcp bind retries an address still held by the socket it replaces
CONTROL_SNDHWM = 16  # replies queued per control peer (replay pages are <= 2 MiB) before ROUTER drops them


def context() -> zmq.asyncio.Context:
    """The daemon's one context (never the global one)."""
    import zmq.asyncio
    return zmq.asyncio.Context()


class PlaintextTcpRefused(ValueError):
    """A tcp endpoint was to be bound or connected without CURVE."""


def curve_server(sock: zmq.Socket, keys: ServerKeys) -> None:
    """Make the endpoints ``sock`` binds from now on CURVE servers, authenticated by the ZAP handler."""
    sock.curve_server = True
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.zap_domain = ZAP_DOMAIN
    sock.zap_enforce_domain = True  # no ZAP handler running: refuse, never let everybody in


def curve_client(sock: zmq.Socket, client: ClientKeys, server_public: bytes) -> None:
    """Make the connections ``sock`` opens from now on CURVE clients of the server with ``server_public``."""
    sock.curve_publickey = client.public
    sock.curve_secretkey = client.secret
    sock.curve_serverkey = server_public


def _bind(sock: zmq.Socket, endpoint: str) -> None:
    if endpoint.startswith("tcp://") and not sock.curve_server:
        raise PlaintextTcpRefused(f"{endpoint}: plaintext tcp is refused (any local user could connect): "
                                  "tcp endpoints are bound only with CURVE")
    deadline = time.monotonic() + REBIND_S
    while True:
        try:
            sock.bind(endpoint)
            return
        except zmq.ZMQError as exc:
            # a restarted actor's new socket: the old listener closes asynchronously in libzmq's I/O thread
            if exc.errno != errno.EADDRINUSE or not endpoint.startswith("tcp://") or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _connect(sock: zmq.Socket, endpoint: str, curve: ClientCurve | None) -> None:
    if curve is not None:
        curve_client(sock, curve.client, curve.server_public)
    elif endpoint.startswith("tcp://"):
        raise PlaintextTcpRefused(f"{endpoint}: a tcp endpoint needs the server's public key (CURVE)")
    sock.connect(endpoint)


def bind_curve(sock: zmq.Socket, endpoints: Sequence[str], keys: ServerKeys) -> None:
    """Bind ``endpoints`` with CURVE (after the socket's plaintext ipc binds, which stay plaintext)."""
    if endpoints:
        curve_server(sock, keys)
        _watch_handshakes(sock)
        for ep in endpoints:
            _bind(sock, ep)
            _curve_listeners.append((weakref.ref(sock), ep, sock.last_endpoint.decode()))


_MONITOR_STOPPED = int(zmq.EVENT_MONITOR_STOPPED)
# the monitors of the CURVE sockets: (the monitor socket, a blocking view of it to drain, its tally)
_handshake_monitors: list[tuple[zmq.Socket, zmq.Socket, handshakes.Tally]] = []


def _watch_handshakes(sock: zmq.Socket) -> None:
    """Monitor ``sock``'s connections for failed handshakes that are not ZAP's refusals (those are
    counted there)."""
    monitor = sock.get_monitor_socket(handshakes.EVENTS | _MONITOR_STOPPED)  # stopped: the socket closed
    _handshake_monitors.append((monitor, zmq.Socket.shadow(monitor.underlying), handshakes.Tally()))


def failed_handshakes() -> int:
    """How many connections to a CURVE endpoint failed their handshake since the last call: those
    libzmq reports as failed (``HANDSHAKE_FAILED_PROTOCOL`` / ``_NO_DETAIL``: a plaintext ZeroMQ
    peer, a protocol error, a connection dropped mid-handshake) and tcp connections that ended
    without any handshake outcome (no ZeroMQ greeting: an HTTP request, a port scan; see
    ``orchd.handshakes``).  A key the ZAP handler refuses is not among them (``orchd.zap``
    counts those).  Never blocks; a monitor whose socket was closed is closed too."""
    from zmq.utils.monitor import parse_monitor_message
    failed = 0
    for entry in list(_handshake_monitors):
        monitor, view, tally = entry
        while True:
            try:
                frames = view.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:
                frames = None
            event = parse_monitor_message(frames) if frames and len(frames) == 2 else None
            if event is None or event["event"] == _MONITOR_STOPPED:
                _handshake_monitors.remove(entry)
                monitor.close(linger=0)
                break
            failed += tally.event(event["event"], event["value"], event["endpoint"])
    return failed


# (socket, endpoint as configured, endpoint as bound): what drop_curve_clients unbinds and binds again
_curve_listeners: list[tuple[weakref.ref, str, str]] = []


def drop_curve_clients() -> int:
    """Close every connection accepted on a CURVE endpoint, and listen again at once.

    libzmq has no call to drop one peer, but unbinding an endpoint ends the
    connections accepted through it.  The clients reconnect by themselves and
    meet the ZAP handler again: that is how a revoked key loses a connection
    it already had.  Returns how many endpoints were bound again.
    """
    live = []
    for ref, endpoint, bound in _curve_listeners:
        sock = ref()
        if sock is None or sock.closed:
            continue
        sock.unbind(bound)
        _bind(sock, endpoint)
        live.append((ref, endpoint, sock.last_endpoint.decode()))
    _curve_listeners[:] = live
    return len(live)


def _bind_remote(sock: zmq.Socket, endpoints: Sequence[str], keys: ServerKeys | None) -> None:
    if endpoints and keys is None:
        raise PlaintextTcpRefused(f"{', '.join(endpoints)}: remote endpoints are bound only with CURVE keys")
    if keys is not None:
        bind_curve(sock, endpoints, keys)


def _bound(sock: zmq.Socket, endpoints: Sequence[str], curve: ServerKeys | None = None,
           curve_endpoints: Sequence[str] = ()) -> zmq.Socket:
    """Bind ``sock`` to its plaintext ``endpoints`` (ipc) and its CURVE ``curve_endpoints``;
    on any failure the socket is closed before the error goes on."""
    try:
        for ep in endpoints:
            _bind(sock, ep)
        _bind_remote(sock, curve_endpoints, curve)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


def control_router(ctx: zmq.asyncio.Context, endpoint: str, max_frame_bytes: int,
                   curve: ServerKeys | None = None, curve_endpoints: Sequence[str] = ()) -> zmq.asyncio.Socket:
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.maxmsgsize = max(max_frame_bytes * 4, 64 << 20)
    sock.router_mandatory = False
    sock.sndhwm = CONTROL_SNDHWM
    sock.rcvhwm = 1000
    return _bound(sock, [endpoint], curve, curve_endpoints)


def events_pub(ctx: zmq.asyncio.Context, endpoints: list[str], hwm: int,
               curve: ServerKeys | None = None, curve_endpoints: Sequence[str] = ()) -> zmq.asyncio.Socket:
    sock = ctx.socket(zmq.PUB)
    sock.linger = 0
    sock.sndhwm = hwm
    return _bound(sock, endpoints, curve, curve_endpoints)


def mailbox(ctx: zmq.asyncio.Context, endpoint: str, hwm: int) -> zmq.asyncio.Socket:
    sock = ctx.socket(zmq.PULL)
    sock.linger = 0
    sock.rcvhwm = hwm
    sock.bind(endpoint)
    return sock


def push(ctx: zmq.asyncio.Context, endpoint: str, hwm: int, linger_s: float = 0.0) -> zmq.asyncio.Socket:
    sock = ctx.socket(zmq.PUSH)
    sock.linger = int(linger_s * 1000)
    sock.sndhwm = hwm
    sock.connect(endpoint)
    return sock


# ---------------------------------------------------------------- clients' sockets (orchctl, the HTTP bridge)

CLIENT_HWM = 1000  # requests or replies queued on a client's DEALER


def control_dealer(ctx: zmq.Context, endpoint: str, curve: ClientCurve | None = None) -> zmq.Socket:
    """A client's DEALER to the control socket (the HTTP bridge is a client like ``orchctl``).

    ``curve``: connect as a CURVE client (required for a tcp endpoint:
    ``PlaintextTcpRefused`` without it).
    """
    return client_dealer(ctx, endpoint, curve, watch_auth=False)[0]


def client_dealer(ctx: zmq.Context, endpoint: str, curve: ClientCurve | None = None,
                  watch_auth: bool = True) -> tuple[zmq.Socket, zmq.Socket | None]:
    """``control_dealer``, and with ``curve`` and ``watch_auth`` a monitor socket that receives
    ``EVENT_HANDSHAKE_FAILED_AUTH`` (the daemon refused the client's key), attached before the
    connect so that no refusal is missed (None otherwise; the caller closes both)."""
    sock = ctx.socket(zmq.DEALER)
    monitor = None
    try:
        sock.linger = 0
        sock.sndhwm = CLIENT_HWM
        sock.rcvhwm = CLIENT_HWM
        if curve is not None and watch_auth:
            monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        _connect(sock, endpoint, curve)
    except BaseException:
        if monitor is not None:
            monitor.close(linger=0)
        sock.close(linger=0)
        raise
    return sock, monitor


def events_sub(ctx: zmq.Context, endpoint: str, hwm: int, curve: ClientCurve | None = None,
               topics: Sequence[bytes] = (b"",)) -> zmq.Socket:
    """A client's SUB to the events socket, subscribed to ``topics`` (by default every event and
    the sync markers); ``hwm`` 0: no limit (a client that must see every event it subscribed to)."""
    sock = ctx.socket(zmq.SUB)
    try:
        sock.linger = 0
        sock.rcvhwm = hwm
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        _connect(sock, endpoint, curve)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


# ---------------------------------------------------------------- the agent-host link

HOST_LINK_HWM = 10_000  # messages queued per host (events, bundle chunks) before ZeroMQ holds back


def _link_heartbeats(sock: zmq.Socket, heartbeat_s: float) -> None:
    # ZMTP heartbeats close a connection whose peer went silent, so a DEALER reconnects on its
    # own after a cut; the application's own heartbeats decide when a peer is lost
    sock.heartbeat_ivl = int(heartbeat_s * 1000)
    sock.heartbeat_timeout = int(heartbeat_s * 3000)
    sock.heartbeat_ttl = int(heartbeat_s * 3000)


def check_link_endpoint(endpoint: str, secured: bool) -> None:
    """A host link is ``tcp://`` with CURVE, or ``ipc://`` (one machine, tests); anything else is refused."""
    if endpoint.startswith("tcp://"):
        if not secured:
            raise PlaintextTcpRefused(f"{endpoint}: plaintext tcp is refused for the host link: it needs CURVE keys")
    elif not endpoint.startswith("ipc://"):
        raise ValueError(f"{endpoint}: the host link takes tcp:// (with CURVE) or ipc:// endpoints")


def host_link_router(ctx: zmq.asyncio.Context, endpoint: str, max_frame_bytes: int, heartbeat_s: float,
                     server_keys: ServerKeys | None) -> zmq.asyncio.Socket:
    """The supervisor's ROUTER agent hosts connect to (a CURVE server, checked by ZAP, on tcp).

    ``router_handover``: a host that reconnects with its name takes its identity over from the
    dead connection at once, instead of being refused until that one times out."""
    check_link_endpoint(endpoint, server_keys is not None)
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.maxmsgsize = max(max_frame_bytes * 4, 64 << 20)
    sock.router_mandatory = False
    sock.router_handover = True
    sock.sndhwm = sock.rcvhwm = HOST_LINK_HWM
    _link_heartbeats(sock, heartbeat_s)
    if server_keys is not None:  # registered, so a revoked host loses its connection too
        return _bound(sock, [], server_keys, [endpoint])
    return _bound(sock, [endpoint])


def host_link_dealer(ctx: zmq.asyncio.Context, endpoint: str, name: str, heartbeat_s: float,
                     curve: ClientCurve | None) -> zmq.asyncio.Socket:
    """An agent host's DEALER to the supervisor (routing id = the host's name; a CURVE client on tcp)."""
    check_link_endpoint(endpoint, curve is not None)
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.routing_id = name.encode()
    sock.sndhwm = sock.rcvhwm = HOST_LINK_HWM
    sock.reconnect_ivl = 100
    sock.reconnect_ivl_max = int(heartbeat_s * 1000)
    _link_heartbeats(sock, heartbeat_s)
    try:
        _connect(sock, endpoint, curve)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock
