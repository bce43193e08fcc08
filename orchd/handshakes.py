"""Which connections to a CURVE port failed to become ZeroMQ connections: a pure tally.

libzmq's socket monitor reports a failed handshake (``HANDSHAKE_FAILED_PROTOCOL``,
``_NO_DETAIL``: a plaintext ZeroMQ peer, a peer gone mid-handshake) but says
nothing when a peer sends something that is no ZeroMQ greeting at all (an
HTTP request, a port scanner's probe): that connection is only ``ACCEPTED``
and then ``DISCONNECTED``, with no handshake event between.  ``Tally`` tells
those apart from the connections that had an outcome and counts both kinds of
failure.

Handshake events name no connection (their value is an error code, not the
descriptor ``ACCEPTED`` and ``DISCONNECTED`` carry).  While one connection
waits for its handshake the next outcome is surely its own; while several do,
an outcome is only known to be one of theirs, and a connection among them that
ends is taken to have had one.  So a silent connection is counted only when
that is certain: never too many; one that ends while another's handshake is
under way may be counted late (when a connection then left waiting ends) or,
while that one stays connected, not yet.  Only tcp connections are tallied
this way (an ipc client of the same socket is a local user's own program); a
failed handshake counts on any transport.

Sans-I/O: ``event(kind, value, endpoint)`` takes what the monitor says and
returns how many new failures to count.
"""

from __future__ import annotations

import zmq

ACCEPTED = int(zmq.EVENT_ACCEPTED)
DISCONNECTED = int(zmq.EVENT_DISCONNECTED)
SUCCEEDED = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
FAILED_AUTH = int(zmq.EVENT_HANDSHAKE_FAILED_AUTH)  # the ZAP handler refused the key: counted there
FAILED = int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL) | int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

EVENTS = ACCEPTED | DISCONNECTED | SUCCEEDED | FAILED_AUTH | FAILED
"""The monitor events ``Tally`` reads."""


class Tally:
    """One CURVE socket's tcp connections still waiting for a handshake outcome."""

    def __init__(self) -> None:
        self._waiting: set[int] = set()  # their descriptors
        self._unplaced = 0               # outcomes seen that are some of theirs, not known whose

    def event(self, kind: int, value: int, endpoint: bytes) -> int:
        """New failures to count for one monitor event (0 or 1)."""
        tcp = endpoint.startswith(b"tcp://")
        if kind == ACCEPTED:
            if tcp:
                self._waiting.add(value)
            return 0
        if kind == DISCONNECTED:
            if not tcp or value not in self._waiting:
                return 0
            self._waiting.discard(value)
            if self._unplaced:  # it may have had one of those outcomes: not surely silent
                self._unplaced -= 1
                return 0
            return 1  # it ended with no handshake outcome: it spoke no ZeroMQ
        if kind & (SUCCEEDED | FAILED_AUTH | FAILED):
            if tcp and self._waiting:
                self._unplaced += 1
                if self._unplaced == len(self._waiting):  # each of them has had its outcome
                    self._waiting.clear()
                    self._unplaced = 0
            return 1 if kind & FAILED else 0
        return 0
