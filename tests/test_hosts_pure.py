"""The pure parts of agent hosts: placement, and the link messages' decoders (any bytes in, only
the documented error out)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.placement import HostSlots, place
from orchd import protocol as p
from orchd import wire

H1 = HostSlots(name="h1", slots=2, busy=0, clis=frozenset({"claude"}))
H2 = HostSlots(name="h2", slots=4, busy=1, clis=frozenset({"claude", "codex"}))


def test_local_first_until_local_slots_are_full():
    assert place("claude", True, 0, None, "any", [H1, H2]) is None     # no local limit: nothing moves
    assert place("claude", True, 1, 2, "any", [H1, H2]) is None
    assert place("claude", True, 2, 2, "any", [H1, H2]) == "h2"        # most free slots
    assert place("claude", True, 2, 2, "local", [H1, H2]) is None


def test_hosts_preference_and_clis():
    assert place("claude", True, 0, None, "hosts", [H1, H2]) == "h2"
    assert place("gemini", True, 0, None, "hosts", [H1, H2]) is None    # no host has its CLI: here
    assert place("codex", True, 0, None, "hosts", [H1]) is None
    assert place("command", True, 0, None, "hosts", [H1]) == "h1"       # needs no CLI
    full = HostSlots(name="h0", slots=1, busy=1, clis=frozenset({"claude"}))
    assert place("claude", True, 0, None, "hosts", [full]) is None


def test_ties_go_by_name_and_unmovable_runs_stay():
    a = HostSlots(name="b", slots=2, busy=0, clis=frozenset())
    b = HostSlots(name="a", slots=3, busy=1, clis=frozenset())
    assert place("command", True, 0, None, "hosts", [a, b]) == "a"
    assert place("command", False, 5, 0, "hosts", [a, b]) is None     # a planner or reviewer run


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_link_decoders_take_any_bytes(raw):
    for dec in (wire.host_inbound, wire.host_outbound):
        try:
            msg = dec.decode(raw)
        except msgspec.DecodeError as exc:
            assert isinstance(exc, wire.WireError)
        else:
            assert isinstance(msg, p.Msg)


@pytest.mark.parametrize("msg", [
    p.HostHello(name="h", slots=2, clis={"claude": "2.1"}, running=["s/a/0"]),
    p.HostEvents(key="s/a/0", seq=3, frames=[b"s worker.log {}"]),
    p.HostResult(key="s/a/0", seq=4, data=b"\x00" * 10, last=True, head="abc", wrapped=True),
    p.LinkTell(key="s/a/0", msg=p.StopWorker(reason="r", state="failed")),
    p.LinkBundle(key="s/a/0", index=0, data=b"x", last=True),
])
def test_link_messages_round_trip(msg):
    dec = wire.host_inbound if type(msg).__name__.startswith("Host") else wire.host_outbound
    assert dec.decode(wire.pack(msg)) == msg


def test_a_host_may_send_only_its_own_runs_events():
    from actors.agents.base import RunSpec
    from actors.hostlink import RemoteWorker
    from actors.worker import WorkerSpec
    spec = WorkerSpec(session="s-1", name="a", agent="command", gen=2, run=RunSpec(prompt="", cwd="/"))
    rw = RemoteWorker(None, spec, "inproc://j", "inproc://s", None, "h1", "/x", "b", [])

    def frame(ev, session="s-1", name="a", gen=2):
        return wire.pending_frame(wire.topic(session), wire.stamp_prefix(session, name, "command", gen), 1.0, ev)
    assert rw._own(frame(p.WorkerLog(line="hi")))
    assert rw._own(frame(p.WorkerExited(state="done", exit_code=0)))
    assert not rw._own(frame(p.WorkerLog(line="hi"), session="s-2"))
    assert not rw._own(frame(p.WorkerLog(line="hi"), name="b"))
    assert not rw._own(frame(p.WorkerLog(line="hi"), gen=1))
    assert not rw._own(frame(p.SessionStateChanged(state="done")))       # not a worker's to say
    assert not rw._own(frame(p.WorkerLaunching()))
    good = frame(p.WorkerLog(line="hi"))
    assert not rw._own(good.replace(b"worker.log", b"worker.done", 1))    # kind and body disagree
    assert not rw._own(good[:-3])                                          # not JSON
    assert not rw._own(b"junk")
