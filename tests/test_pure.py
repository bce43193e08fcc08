"""Pure pieces, tested without I/O: line framer, supervision policy, plans, projection."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import plans, prompts
from actors.sessions import Projection
from orchd import protocol as p
from orchd import wire
from orchd.lines import LineFramer
from orchd.supervision import Intensity, Restart, should_restart


# ---------------------------------------------------------------- line framer

def _frame_all(data: bytes, cuts: list[int], limit: int):
    f = LineFramer(limit)
    out = []
    prev = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]:
        out += f.feed(data[prev:cut])
        prev = cut
    return out + f.close()


@settings(max_examples=400)
@given(st.lists(st.binary(max_size=40), max_size=12), st.lists(st.integers(0, 600), max_size=20),
       st.booleans())
def test_framer_output_does_not_depend_on_how_input_is_split(lines, cuts, trailing_newline):
    data = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    whole = _frame_all(data, [], 32)
    assert _frame_all(data, cuts, 32) == whole
    # byte at a time too (h11-style)
    assert _frame_all(data, list(range(len(data))), 32) == whole
    for text, problems, size in whole:
        assert "\x00" not in text
        if "too_long" not in problems:
            assert size <= 32


def test_framer_reports_each_problem():
    f = LineFramer(10)
    out = f.feed(b"ok\n" + b"y" * 25 + b"\n\xff\xfe\nnul\x00here\n") + f.feed(b"tail") + f.close()
    assert out[0] == ("ok", (), 2)
    assert out[1][1] == ("too_long",) and out[1][2] == 25
    assert out[2][1] == ("invalid_utf8",)
    assert out[3] == ("nulhere", ("nul",), 8)
    assert out[4] == ("tail", ("partial",), 4)


def test_framer_memory_is_bounded_for_an_endless_line():
    f = LineFramer(1000)
    for _ in range(2000):
        assert f.feed(b"z" * 4096) == []
    assert len(f._buf) == 0  # the over-limit line is skipped, not held
    (text, problems, size), = f.feed(b"\n")
    assert problems == ("too_long",) and size == 2000 * 4096


# ---------------------------------------------------------------- supervision

def test_restart_types():
    assert should_restart(Restart.PERMANENT, crashed=False)
    assert should_restart(Restart.PERMANENT, crashed=True)
    assert should_restart(Restart.TRANSIENT, crashed=True)
    assert not should_restart(Restart.TRANSIENT, crashed=False)
    assert not should_restart(Restart.TEMPORARY, crashed=True)


def test_restart_intensity_window():
    i = Intensity(max_restarts=3, period_s=10.0)
    assert [i.allow(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert not i.allow(3.0)          # a 4th within 10 s escalates
    assert i.allow(10.5)             # the restart at t=0 has left the window


# ---------------------------------------------------------------- plans

KNOWN = {"claude", "codex", "gemini", "command"}


def test_plan_validation_errors():
    ok = {"assignments": [{"name": "a", "agent": "command", "argv": ["true"]},
                          {"name": "b", "agent": "claude", "after": ["a"]}]}
    assert [a.name for a in plans.load_plan(ok, KNOWN)] == ["a", "b"]
    bad = [
        ({"assignments": []}, "no assignments"),
        ({"assignments": [{"name": "a", "agent": "zzz"}]}, "unknown agent"),
        ({"assignments": [{"name": "a", "agent": "command"}]}, "argv"),
        ({"assignments": [{"name": "a", "agent": "claude", "after": ["b"]},
                          {"name": "b", "agent": "claude", "after": ["a"]}]}, "cycle"),
        ({"assignments": [{"name": "a", "agent": "claude"}, {"name": "a", "agent": "codex"}]}, "twice"),
        ({"assignments": [{"name": "a/b", "agent": "claude"}]}, "branch"),
        ({"assignments": [{"agent": "claude"}]}, "invalid plan"),
        ({"assignments": [{"name": "a", "agent": "claude", "weight": "heavy"}]}, "invalid plan"),
        ({"assignments": [{"name": "a", "agent": "claude", "profile": "root"}]}, "profile"),
    ]
    for data, needle in bad:
        with pytest.raises(plans.PlanError, match=needle):
            plans.load_plan(data, KNOWN)


def test_default_plan_follows_roles_in_order():
    roles = [{"name": "design", "agent": "gemini", "role": "design", "weight": 40},
             {"name": "implement", "agent": "claude", "role": "impl", "weight": 40},
             {"name": "review", "agent": "codex", "role": "review", "weight": 20}]
    a = plans.default_plan(roles, None)
    assert [(x.name, x.agent, x.after) for x in a] == [
        ("design", "gemini", []), ("implement", "claude", ["design"]), ("review", "codex", ["implement"])]
    b = plans.default_plan(roles, ["claude", "codex"])
    assert [(x.name, x.after) for x in b] == [("implement", []), ("review", ["implement"])]


def test_prompt_carries_task_role_history_and_markers():
    a = p.AssignmentSpec(name="implement", agent="claude", role="implementation and tests", after=["design"])
    d = p.AssignmentSpec(name="design", agent="gemini", role="design")
    text = prompts.prompt_for("Add a cache", a, [(d, "Designed an LRU cache in docs/cache.md", "orchd/s-1.design")])
    for needle in ("Add a cache", "implementation and tests", "orchd-assignment: implement",
                   "Designed an LRU cache", "orchd/s-1.design", "MILESTONE:", "BLOCKER:", "REQUEST_REVIEW:", "DONE:"):
        assert needle in text


def test_plan_from_planner_answer():
    text = 'Sure!\n```json\n{"assignments": [{"name": "x", "agent": "codex"}]}\n```'
    assert plans.plan_from_answer(text, KNOWN)[0].agent == "codex"
    for bad in ("no json here", "{not json}", '{"assignments": [{"name": "orchd-planner", "agent": "codex"}]}'):
        with pytest.raises(plans.PlanError):
            plans.plan_from_answer(bad, KNOWN)


# ---------------------------------------------------------------- projection

def _apply(proj, ev, worker=None, gen=0, session="s1"):
    proj.apply(p.Stamp(seq=0, ts=1.0, session=session, worker=worker, agent="command", gen=gen), ev)


def test_projection_ignores_older_generations_and_tracks_usage():
    proj = Projection()
    a = p.AssignmentSpec(name="w", agent="command", argv=["x"], weight=2)
    _apply(proj, p.SessionSubmitted(task="t", target="/t", assignments=[a]))
    _apply(proj, p.SessionStateChanged(state="running"))
    s = proj.sessions["s1"]
    assert s.ready() == ["w"]
    _apply(proj, p.WorkerLaunching(), worker="w", gen=0)
    _apply(proj, p.AgentUsage(input_tokens=10, output_tokens=5, cost_usd=0.5), worker="w", gen=0)
    _apply(proj, p.WorkerLaunching(resume=True), worker="w", gen=1)
    # gen 0's last words arrive late: ignored
    _apply(proj, p.WorkerExited(state="failed", exit_code=1), worker="w", gen=0)
    assert s.workers["w"].state == "running"
    _apply(proj, p.WorkerMilestone(text="m"), worker="w", gen=1)
    assert s.progress() == pytest.approx(0.3)
    _apply(proj, p.AgentUsage(input_tokens=1, output_tokens=1), worker="w", gen=1)
    _apply(proj, p.WorkerExited(state="done", exit_code=0), worker="w", gen=1)
    w = s.workers["w"]
    assert (w.state, w.exit_code, w.gen, w.relaunches) == ("done", 0, 1, 1)
    assert s.tokens() == (17, 0.5)
    assert s.outcome() == ("done", None)


def test_wire_event_frames_round_trip():
    stamp = wire.stamp_prefix("s-1", "w", "claude", 3)
    pending = wire.pending_frame(wire.topic("s-1"), stamp, 12.5, p.AgentText(text='say "hi"\n'))
    frame, topic, kind, js = wire.sequence_frame(pending, 42)
    assert frame.startswith(b"s-1 agent.text {")
    st_, ev = wire.decode_event(js)
    assert (st_.seq, st_.ts, st_.session, st_.worker, st_.agent, st_.gen) == (42, 12.5, "s-1", "w", "claude", 3)
    assert ev == p.AgentText(text='say "hi"\n')


# ---------------------------------------------------------------- config

def test_config_layers_and_endpoint_rules(tmp_path):
    from orchd import config

    f = tmp_path / "orchd.toml"
    f.write_text('stop_grace_s = 2.5\n[limits]\nstall_s = 30\n')
    cfg = config.load(f, {"stop_grace_s": 1.0}, environ={"ORCHD_LIMITS__STALL_S": "20", "ORCHD_LOG_LEVEL": "debug"})
    assert (cfg.stop_grace_s, cfg.limits.stall_s, cfg.log_level) == (1.0, 20.0, "debug")
    ok = config.load(None, {"runtime_dir": "/run/o", "control_endpoint": "ipc:///run/o/ctl"}, environ={})
    assert ok.control() == "ipc:///run/o/ctl"
    # no plaintext tcp at all, loopback included, and the refusal does not suggest tcp
    for ep in ("tcp://127.0.0.1:5555", "tcp://localhost:5555", "tcp://0.0.0.0:5556"):
        for field in ("control_endpoint", "events_endpoint"):
            with pytest.raises(ValueError, match="plaintext tcp is refused") as err:
                config.load(None, {field: ep}, environ={})
            assert "tcp://" not in str(err.value).replace(ep, "")
    for ep in ("ipc://@orchd", "ipc:///tmp/elsewhere/control", "inproc://x"):
        with pytest.raises(ValueError, match="runtime dir"):
            config.load(None, {"runtime_dir": "/run/o", "control_endpoint": ep}, environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_field = 1\n")
    with pytest.raises(ValueError, match="no_such_field"):
        config.load(bad, environ={})
