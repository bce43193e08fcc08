"""The control-socket client: one DEALER, every call with a deadline."""

from __future__ import annotations

import os
import secrets

import zmq

from orchd import protocol as p
from orchd import wire


class Unreachable(Exception):
    """The daemon did not answer in time (or its socket does not exist)."""


class Client:
    def __init__(self, control: str, timeout_s: float = 10.0, connect_timeout_s: float = 1.5) -> None:
        self.control = control
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._alive = False
        self.ctx = zmq.Context.instance()
        self.sock: zmq.Socket | None = None

    def _socket(self) -> zmq.Socket:
        if self.sock is None:
            if self.control.startswith("ipc://") and not os.path.exists(self.control[len("ipc://"):]):
                raise Unreachable(f"orchd is not running at {self.control}: start it with 'orchd run'")
            self.sock = self.ctx.socket(zmq.DEALER)
            self.sock.linger = 0
            self.sock.connect(self.control)
        return self.sock

    def call(self, body: p.ControlRequest, timeout_s: float | None = None) -> p.ControlReply:
        """Send one request and wait for its reply.

        The first call is preceded by a ``Ping`` with a short deadline, so a
        dead daemon is reported within 2 s even when the request itself may
        take longer to serve (``submit``).
        """
        if not self._alive:
            self._alive = True
            self._call(p.Ping(), self.connect_timeout_s)
        return self._call(body, timeout_s)

    def _call(self, body: p.ControlRequest, timeout_s: float | None) -> p.ControlReply:
        sock = self._socket()
        rid = secrets.token_hex(6)
        sock.send(wire.encode_request(body, rid))
        deadline_ms = int((self.timeout_s if timeout_s is None else timeout_s) * 1000)
        while True:
            if not sock.poll(deadline_ms, zmq.POLLIN):
                self.close()  # a late reply must not be read as the answer to the next call
                self._alive = False
                raise Unreachable(f"orchd is not running at {self.control}: start it with 'orchd run'")
            reply = wire.decode_reply(sock.recv())
            if reply.id == rid or reply.id == "":
                return reply.body

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
