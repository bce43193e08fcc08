"""Every ZeroMQ socket the daemon makes, made here.

One place decides each socket's type, options and limits, so securing the
public sockets (CURVE, a ZAP handler) is a change to this module only.

Public sockets (clients connect to them):

* ``control_router``: the control ROUTER.  Frames over ``max_frame_bytes``
  are answered ``too_large`` by ``orchd.control``; frames over four times
  that drop the peer inside libzmq.  The send queue per peer is bounded so
  a client that never reads its replies costs a bounded amount of memory.
* ``events_pub``: the events PUB, with a per-subscriber queue bound.

Internal sockets (inproc between actors; any endpoint would do):

* ``mailbox``: an actor's PULL inbox; ``push``: a PUSH to one.

Every socket has ``linger = 0`` except PUSH sockets that must deliver what
was sent before their owner went away (``push(..., linger_s=...)``).
"""

from __future__ import annotations

import zmq
import zmq.asyncio

CONTROL_SNDHWM = 16  # replies queued per control peer (replay pages are <= 2 MiB) before ROUTER drops them


def context() -> zmq.asyncio.Context:
    """The daemon's one context (never the global one)."""
    return zmq.asyncio.Context()


def control_router(ctx: zmq.asyncio.Context, endpoint: str, max_frame_bytes: int) -> zmq.asyncio.Socket:
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.maxmsgsize = max(max_frame_bytes * 4, 64 << 20)
    sock.router_mandatory = False
    sock.sndhwm = CONTROL_SNDHWM
    sock.rcvhwm = 1000
    sock.bind(endpoint)
    return sock


def events_pub(ctx: zmq.asyncio.Context, endpoints: list[str], hwm: int) -> zmq.asyncio.Socket:
    sock = ctx.socket(zmq.PUB)
    sock.linger = 0
    sock.sndhwm = hwm
    for ep in endpoints:
        sock.bind(ep)
    return sock


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


# ---------------------------------------------------------------- the HTTP bridge's client sockets

def control_dealer(ctx: zmq.asyncio.Context, endpoint: str) -> zmq.asyncio.Socket:
    """A client's DEALER to the control socket (the HTTP bridge is a client like ``orchctl``)."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.sndhwm = 1000
    sock.rcvhwm = 1000
    sock.connect(endpoint)
    return sock


def events_sub(ctx: zmq.asyncio.Context, endpoint: str, hwm: int) -> zmq.asyncio.Socket:
    """A client's SUB to the events socket, subscribed to every event and to sync markers."""
    sock = ctx.socket(zmq.SUB)
    sock.linger = 0
    sock.rcvhwm = hwm
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock
