"""orchd.handshakes: telling connections that spoke no ZeroMQ from those that had a handshake outcome,
from the socket monitor's events as libzmq 4.3 orders them (tests/test_curve.py has a real daemon)."""

from __future__ import annotations

import itertools

import zmq

from orchd.handshakes import ACCEPTED, DISCONNECTED, FAILED_AUTH, SUCCEEDED, Tally

PROTOCOL = int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
NO_DETAIL = int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
TCP = b"tcp://127.0.0.1:7870"
IPC = b"ipc:///run/orchd/control"


def counted(events) -> int:
    t = Tally()
    return sum(t.event(kind, value, ep) for kind, value, ep in events)


def one(fd: int, outcome: int | None, ep: bytes = TCP) -> list[tuple[int, int, bytes]]:
    """One connection's events in libzmq's order: accepted, its handshake outcome (if any), gone."""
    return [(ACCEPTED, fd, ep), *([(outcome, 0, ep)] if outcome is not None else []), (DISCONNECTED, fd, ep)]


def test_a_connection_that_ends_with_no_handshake_outcome_is_counted():
    assert counted(one(15, None)) == 1  # an HTTP request, a port scanner


def test_a_failed_handshake_is_counted_once_and_a_good_or_refused_key_not_at_all():
    assert counted(one(15, PROTOCOL)) == 1  # a plaintext ZeroMQ peer
    assert counted(one(15, NO_DETAIL)) == 1
    assert counted(one(15, SUCCEEDED)) == 0
    assert counted(one(15, FAILED_AUTH)) == 0  # orchd.zap counts those


def test_ipc_clients_are_not_tallied_but_their_failed_handshakes_count():
    assert counted(one(9, None, IPC)) == 0  # a local program that connected and went: not a knock
    assert counted(one(9, SUCCEEDED, IPC)) == 0
    assert counted(one(9, PROTOCOL, IPC)) == 1


def test_one_descriptor_used_again_is_a_new_connection():
    assert counted(one(15, SUCCEEDED) + one(15, None) + one(15, SUCCEEDED) + one(15, None)) == 2


def test_never_too_many_and_exact_once_every_connection_has_ended_in_any_interleaving():
    """Three connections, each silent, succeeding or failing, their events interleaved in every
    order libzmq can give (each one's own events in order): the running count never passes the
    silent-or-failed connections already gone, and once all have ended it is exactly them."""
    kinds = [None, SUCCEEDED, PROTOCOL, FAILED_AUTH]
    for outcomes in itertools.product(kinds, repeat=3):
        streams = [one(fd, out) for fd, out in zip((11, 12, 13), outcomes)]
        silent = {fd for fd, out in zip((11, 12, 13), outcomes) if out is None}
        failing = sum(out == PROTOCOL for out in outcomes)
        for order in _interleavings([len(s) for s in streams]):
            t, pos, total, failed_seen, silent_gone = Tally(), [0, 0, 0], 0, 0, 0
            for i in order:
                kind, value, ep = streams[i][pos[i]]
                pos[i] += 1
                total += t.event(kind, value, ep)
                failed_seen += kind == PROTOCOL
                silent_gone += kind == DISCONNECTED and value in silent
                assert total <= silent_gone + failed_seen, (outcomes, order)
            assert total == len(silent) + failing, (outcomes, order)


def _interleavings(lengths: list[int]):
    """Every merge order of streams of these lengths (as the stream index taken at each step)."""
    if not any(lengths):
        yield []
        return
    for i, n in enumerate(lengths):
        if n:
            rest = lengths[:i] + [n - 1] + lengths[i + 1:]
            for tail in _interleavings(rest):
                yield [i, *tail]
