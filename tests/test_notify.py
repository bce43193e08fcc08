"""Notifications: the pure tracker, and real daemons delivering to a command and a webhook."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

from orchd import config, notify, paths
from orchd import protocol as p
from tests.conftest import fake, wait_for, write_plan
from tests.helpers import Hook, notify_recorder, replay_all

NOW = 1_800_000_000.0


# ---------------------------------------------------------------- the tracker (pure)

def _st(seq, session="s-1", worker=None):
    return p.Stamp(seq=seq, ts=NOW + seq, session=session, worker=worker)


def test_question_once_then_resolved_when_answered():
    t = notify.Tracker()
    [q] = t.feed(_st(5, worker="impl"), p.SessionQuestion(question="Which DB?\nPostgres or SQLite?"))
    assert (q.situation, q.key, q.worker) == ("question", "s-1/question/5", "impl")
    assert q.action == 'orchctl answer s-1 "<your answer>"'
    assert q.reason == "Which DB? Postgres or SQLite?"
    assert "s-1 is waiting for your answer" in q.message and q.action in q.message
    assert t.feed(_st(6), p.SessionQuestion(question="again?")) == []  # a repeat of the open situation
    assert t.feed(_st(7), p.SessionStateChanged(state="paused")) == []
    [r] = t.feed(_st(8), p.SessionAnswered(text="SQLite"))
    assert (r.situation, r.key, r.resolves, r.opened_as) == ("resolved", "s-1/question/5/resolved", q.key, "question")
    assert t.feed(_st(9), p.SessionStateChanged(state="running")) == []  # nothing open any more
    [q2] = t.feed(_st(10), p.SessionQuestion(question="next one"))
    assert q2.key == "s-1/question/10"


def test_resume_and_stop_resolve_an_open_situation():
    t = notify.Tracker()
    t.feed(_st(1), p.SessionQuestion(question="?"))
    [r] = t.feed(_st(2), p.SessionStateChanged(state="running"))
    assert r.situation == "resolved" and r.reason == "question resumed"
    t.feed(_st(3), p.SessionQuestion(question="?"))
    [r] = t.feed(_st(4), p.SessionStateChanged(state="stopped", reason="stopped by user"))
    assert r.reason == "question stopped: stopped by user"


def test_endings_escalation_and_budget():
    t = notify.Tracker()
    [q] = t.feed(_st(1), p.SessionQuestion(question="?"))
    [e] = t.feed(_st(2), p.SessionStateChanged(state="escalated", reason="blocker: data loss"))
    assert (e.situation, e.key, e.resolves, e.reason) == ("escalated", "s-1/escalated", q.key, "blocker: data loss")
    assert e.action == "orchctl status s-1"
    # every stopped worker logs worker.limit: one budget notification
    [b] = t.feed(_st(3, "s-2", "a"), p.WorkerLimit(limit="tokens", detail="session used 900 tokens, budget 10"))
    assert t.feed(_st(4, "s-2", "b"), p.WorkerLimit(limit="tokens", detail="same")) == []
    assert (b.situation, b.key, b.worker) == ("budget", "s-2/budget/tokens", "a")
    assert t.feed(_st(5, "s-2"), p.WorkerLimit(limit="stall")) == []  # not a budget
    [f] = t.feed(_st(6, "s-2"), p.SessionStateChanged(state="failed", reason="budget exceeded"))
    [d] = t.feed(_st(7, "s-3"), p.SessionStateChanged(state="done"))
    assert (f.key, d.key, d.reason) == ("s-2/failed", "s-3/done", "")
    assert t.feed(_st(8, "s-3"), p.SessionStateChanged(state="done")) == []  # same key: once


def test_replayed_events_send_nothing_but_restore_what_is_open():
    t = notify.Tracker()
    t.replay(_st(1), p.SessionQuestion(question="?"))
    t.replay(_st(2, "s-2"), p.SessionStateChanged(state="failed"))
    assert t.feed(_st(3, "s-2"), p.SessionStateChanged(state="failed")) == []
    [r] = t.feed(_st(4), p.SessionAnswered(text="yes"))
    assert r.resolves == "s-1/question/1"


def test_keys_are_remembered_up_to_a_bound():
    t = notify.Tracker(remember=2)
    for i in range(3):
        t.feed(_st(i, f"s-{i}"), p.SessionStateChanged(state="done"))
    assert len(t._seen) == 2
    assert t.feed(_st(9, "s-2"), p.SessionStateChanged(state="done")) == []


def test_channel_filters():
    t = notify.Tracker()
    [q] = t.feed(_st(1), p.SessionQuestion(question="?"))
    [r] = t.feed(_st(2), p.SessionAnswered(text="x"))
    assert notify.wanted(q, ["question"]) and notify.wanted(r, ["question"])
    assert not notify.wanted(q, ["done"]) and not notify.wanted(r, ["done"])
    cfg = config.NotifyConfig(command=["x"], webhook="http://h/", on=["done"], webhook_on=["failed"])
    assert cfg.channels() == {"command": ["done"], "webhook": ["failed"]}
    assert config.NotifyConfig().channels() == {}


def test_retry_delays_grow_with_jitter_and_a_cap():
    assert notify.retry_delay_s(1, 0.5, 30, 0.0) == 0.25
    assert notify.retry_delay_s(1, 0.5, 30, 0.999) == pytest.approx(0.5, abs=0.001)
    assert notify.retry_delay_s(3, 0.5, 30, 0.0) == 1.0
    assert notify.retry_delay_s(50, 0.5, 30, 1.0) == 30.0
    assert [notify.retryable_status(s) for s in (500, 503, 429, 408, 404, 400)] == [True] * 4 + [False] * 2


@pytest.mark.parametrize("body, error", [
    ('[notify]\nwebhook = "file:///etc/passwd"\n', "notify.webhook"),
    ('[notify]\ncommand = []\n', "notify.command"),
    ('[notify]\non = ["everything"]\n', "notify.on[0]: invalid value"),
    ('[notify]\nwebhok = "http://x"\n', "did you mean 'webhook'"),
    ('[notify]\nwebhook_attempts = 0\n', "notify.webhook_attempts"),
])
def test_config_is_strict(tmp_path, body, error):
    f = tmp_path / "c.toml"
    f.write_text(body)
    with pytest.raises(ValueError, match=error.replace("[", r"\[").replace("]", r"\]")):
        config.load(f, environ={})


def test_events_before_the_start_are_silent_and_later_ones_are_notified(tmp_path):
    from actors.notifier import Notifier, NotifierPorts
    from orchd import bus
    from orchd.store import EventLog

    log_path = tmp_path / "events.sqlite3"
    events = EventLog(log_path)
    rows = []
    for seq, sid, state in ((1, "s-old", "failed"), (2, "s-q", None), (3, "s-new", "failed"), (4, "s-q", "running")):
        body = {"seq": seq, "ts": NOW, "session": sid, "kind": "session.state", "state": state} if state else \
            {"seq": seq, "ts": NOW, "session": sid, "kind": "session.question", "question": "?"}
        rows.append((seq, sid, body["kind"], json.dumps(body).encode()))
    events.append(rows, 0.0)
    events.close()
    cfg = config.Config(notify=config.NotifyConfig(command=["true"]))
    ctx = bus.context()
    ports = NotifierPorts(ctx, cfg, log_path, "inproc://notify-test", "inproc://journal-test", start_seq=2)
    try:
        n = Notifier(cfg.notify, log_path, ports, str(tmp_path))
        assert n._replay() == 4
        # s-old failed before the start: silent; the question was open at the start, its
        # resolution came after: notified; so was s-new's failure
        assert [x.key for x in n._pending] == ["s-new/failed", "s-q/question/2/resolved"]
        assert ports.handled_seq == 4
        again = Notifier(cfg.notify, log_path, ports, str(tmp_path))  # a restart after a crash
        again._replay()
        assert again._pending == []
    finally:
        ports.close()
        ctx.destroy(linger=0)


# ---------------------------------------------------------------- real daemons

@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def _toml(**kw) -> str:
    return "[notify]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in kw.items())


def _events(d, kind: str) -> list[dict]:
    return [e for _, body in replay_all(paths.control_endpoint(d.runtime_dir))
            if (e := json.loads(body))["kind"] == kind]


def _failing_session(d, git_repo, tmp_path, name="bad") -> str:
    plan = write_plan(tmp_path / f"{name}.json", [{"name": name, "agent": "command",
                                                    "argv": fake("line:trying", "exit:1")}])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    assert d.wait_session(sid)["state"] == "failed"
    return sid


def test_a_failed_session_notifies_the_command_and_the_webhook(daemon_factory, git_repo, tmp_path, hook):
    out = tmp_path / "notified.jsonl"
    d = daemon_factory(_toml(command=notify_recorder(out), webhook=hook.url))
    sid = _failing_session(d, git_repo, tmp_path)
    got = wait_for(lambda: out.exists() and out.read_text().strip() and json.loads(out.read_text()), 20,
                   "the notify command to run")
    assert got["situation"] == "failed" and got["session"] == sid and got["key"] == f"{sid}/failed"
    assert got["action"] == f"orchctl status {sid}" and got["reason"] == "assignment(s) did not finish: bad"
    assert got["message"].startswith(f"orchd: session {sid} failed")
    wait_for(lambda: hook.posts, 20, "the webhook POST")
    body, headers = hook.posts[0]
    assert body == got
    assert headers["Content-Type"] == "application/json" and headers["Idempotency-Key"] == f"{sid}/failed"
    sent = wait_for(lambda: len(e := _events(d, "notify.sent")) == 2 and e, 20, "two notify.sent events")
    assert sorted(e["channel"] for e in sent) == ["command", "webhook"]
    assert all(e["session"] == sid and e["key"] == f"{sid}/failed" and e["situation"] == "failed" for e in sent)

    # a restart replays the log: the old failure is not notified again
    assert d.stop() == 0
    d.start()
    wait_for(lambda: "notifier_ready" in d.log().split("orchd_stopped")[-1], 20, "the restarted notifier")
    sid2 = _failing_session(d, git_repo, tmp_path, "bad2")
    wait_for(lambda: len(out.read_text().splitlines()) >= 2, 20, "the second notification")
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["session"] for x in lines] == [sid, sid2]
    assert d.stop() == 0


def test_a_webhook_that_fails_twice_is_retried_and_sent_once(daemon_factory, git_repo, tmp_path):
    hook = Hook([500, 503])
    try:
        d = daemon_factory(_toml(webhook=hook.url, on=["failed"], webhook_backoff_s=0.05))
        sid = _failing_session(d, git_repo, tmp_path)
        sent = wait_for(lambda: _events(d, "notify.sent"), 20, "notify.sent")
        assert len(hook.posts) == 3
        assert {h["Idempotency-Key"] for _, h in hook.posts} == {f"{sid}/failed"}  # one key for every retry
        assert [(e["channel"], e["attempts"]) for e in sent] == [("webhook", 3)]
        assert _events(d, "notify.failed") == []
        assert d.stop() == 0
    finally:
        hook.close()


def test_a_dead_webhook_gives_notify_failed_and_the_daemon_keeps_serving(daemon_factory, git_repo, tmp_path):
    with socket.socket() as dead:  # accepts connections (the kernel's backlog) and never answers
        dead.bind(("127.0.0.1", 0))
        dead.listen(16)
        out = tmp_path / "notified.jsonl"
        d = daemon_factory(_toml(webhook=f"http://127.0.0.1:{dead.getsockname()[1]}/hook", command=notify_recorder(out),
                                 webhook_attempts=2, webhook_backoff_s=0.05, webhook_timeout_s=1.5))
        sid = _failing_session(d, git_repo, tmp_path)
        # the command channel is not held up by the webhook, nor is the daemon
        [sent] = wait_for(lambda: _events(d, "notify.sent"), 20, "the command's notify.sent")
        assert sent["channel"] == "command" and _events(d, "notify.failed") == []
        assert d.ctl("status", "--json").returncode == 0
        [failed] = wait_for(lambda: _events(d, "notify.failed"), 30, "notify.failed")
        assert failed["channel"] == "webhook" and failed["attempts"] == 2 and failed["session"] == sid
        assert "timed out" in failed["error"], failed
        assert failed["seq"] > sent["seq"]
        # the daemon keeps serving: a new session runs to its end and is notified too
        plan = write_plan(tmp_path / "ok.json", [{"name": "ok", "agent": "command", "argv": fake("exit:0")}])
        sid2 = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
        assert d.wait_session(sid2)["state"] == "done"
        wait_for(lambda: any(json.loads(x)["key"] == f"{sid2}/done" for x in out.read_text().splitlines()), 20,
                 "the done notification")
        assert d.stop() == 0


def test_a_command_that_hangs_is_killed_at_its_deadline(daemon_factory, git_repo, tmp_path):
    pidfile = tmp_path / "hung.pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    d = daemon_factory(_toml(command=[sys.executable, "-c", code], command_timeout_s=1, on=["failed"]))
    _failing_session(d, git_repo, tmp_path)
    [failed] = wait_for(lambda: _events(d, "notify.failed"), 20, "notify.failed")
    assert failed["channel"] == "command" and "killed" in failed["error"]
    pid = int(pidfile.read_text())
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2],
             10, "the hung command to be gone")
    assert d.stop() == 0


def test_budget_exhausted_is_notified_once(daemon_factory, git_repo, tmp_path):
    out = tmp_path / "notified.jsonl"
    d = daemon_factory(_toml(command=notify_recorder(out), on=["budget", "failed"]) + "[limits]\nmax_tokens = 100\n")
    usage = json.dumps({"kind": "agent.usage", "input_tokens": 80, "output_tokens": 0})
    plan = write_plan(tmp_path / "p.json", [
        {"name": n, "agent": "command", "argv": fake(f"event:{usage}", "hang")} for n in ("a", "b")])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    assert d.wait_session(sid)["state"] == "failed"
    wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 2, 20, "two notifications")
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(x["situation"] for x in got) == ["budget", "failed"]
    budget = next(x for x in got if x["situation"] == "budget")
    assert budget["key"] == f"{sid}/budget/tokens" and "budget 100" in budget["reason"]
    assert len(_events(d, "worker.limit")) == 2  # both workers were stopped by it: one notification
    assert d.stop() == 0
