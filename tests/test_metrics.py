"""Prometheus metrics: each value moves when the thing it counts happens (a real daemon, scraped over
HTTP on metrics_port), promtool accepts a live scrape and the example alert rules."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import zmq
from prometheus_client.parser import text_string_to_metric_families

from orchctl.client import Client
from orchd import metrics
from orchd import protocol as p
from tests.conftest import fake, wait_for, write_plan

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "docs" / "orchd-alerts.yml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape_text(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample as ``{(name, sorted labels): value}``."""
    out = {}
    for fam in text_string_to_metric_families(_scrape_text(port)):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _v(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _usage(i: int, o: int, cost: float) -> str:
    return "event:" + json.dumps({"kind": "agent.usage", "input_tokens": i, "output_tokens": o, "cost_usd": cost})


def test_each_metric_moves_when_what_it_counts_happens(daemon_factory, git_repo, tmp_path):
    port = _free_port()
    d = daemon_factory(config=f"metrics_port = {port}\nfault_injection = true\n")
    before = _scrape(port)
    assert _v(before, "orchd_ready") == 1
    assert _v(before, "orchd_event_log_bytes") > 0
    assert _v(before, "process_cpu_seconds_total") > 0 and _v(before, "process_open_fds") > 0

    # a session whose agent reports usage twice (totals so far), then waits: a running worker
    release = tmp_path / "release"
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "w", "agent": "command",
         "argv": fake(_usage(100, 20, 0.5), "line:hello", _usage(150, 30, 0.75), f"waitfile:{release}", "exit:0")},
        {"name": "boom", "agent": "command", "argv": fake("err:it broke", "exit:3"), "after": ["w"]}])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    running = wait_for(lambda: (m := _scrape(port)) and _v(m, "orchd_workers", agent="command", state="running") == 1
                       and _v(m, "orchd_agent_tokens_total", agent="command", direction="input") == 150 and m,
                       20, "the running worker and its usage in the gauges")
    assert _v(running, "orchd_sessions", state="running") == 1
    assert _v(running, "orchd_agent_tokens_total", agent="command", direction="output") == 30  # deltas, not sums
    assert _v(running, "orchd_agent_cost_usd_total", agent="command") == 0.75
    assert _v(running, "orchd_events_total", kind="agent.usage") == 2
    assert _v(running, "orchd_events_total", kind="agent.text") == 1
    assert _v(running, "orchd_event_pipeline_seconds_count") > _v(before, "orchd_event_pipeline_seconds_count")
    assert _v(running, "orchd_journal_commit_seconds_count") > _v(before, "orchd_journal_commit_seconds_count")
    assert _v(running, "orchd_control_request_seconds_count", kind="submit") == 1
    release.touch()
    d.wait_session(sid)
    after = wait_for(lambda: (m := _scrape(port)) and _v(m, "orchd_sessions", state="failed") == 1
                     and _v(m, "orchd_workers", agent="command", state="running") == 0 and m,
                     20, "the failed session, and no running worker, in the gauges")
    assert _v(after, "orchd_sessions", state="running") == 0
    # the catalogue names an unrecognised crash "relaunch" (the policy never relaunches a command)
    assert _v(after, "orchd_recoveries_total", agent="command", code="crashed", action="relaunch") == 1
    assert _v(after, "orchd_events_total", kind="worker.failure") == 1
    assert _v(after, "orchd_event_log_bytes") >= _v(before, "orchd_event_log_bytes")

    # a frame that is not JSON on the control socket
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(f"ipc://{d.runtime_dir}/control")
    dealer.send(b"{not json")
    assert dealer.poll(5000) and b"bad_json" in dealer.recv()
    ctx.destroy(linger=0)
    bad = _scrape(port)
    assert _v(bad, "orchd_bad_messages_total", socket="control", code="bad_json") == 1

    # an actor restart
    c = Client(f"ipc://{d.runtime_dir}/control", timeout_s=5)
    try:
        assert isinstance(c.call(p.InjectFault(actor="journal")), p.Ok)
    finally:
        c.close()
    wait_for(lambda: _v(_scrape(port), "orchd_actor_restarts_total", actor="journal") == 1, 10, "the journal restart")
    assert d.stop() == 0


def test_event_derived_counters_take_the_kinds_other_actors_emit_with_bounded_labels():
    """reviews, decisions and notifications come from events other actors log; unknown values are ``other``."""
    def value(counter, *labels):
        return counter.labels(*labels)._value.get()

    before = (value(metrics.reviews, "approve"), value(metrics.decisions, "merge"),
              value(metrics.notifications, "webhook", "sent"), value(metrics.notifications, "other", "failed"),
              value(metrics.events, "review.verdict"))
    metrics.observe_batch({b"review.verdict": 1, b"decision.made": 1, b"notify.sent": 1, b"notify.failed": 1}, [
        b'{"seq":1,"session":"s-1","kind":"review.verdict","verdict":"approve"}',
        b'{"seq":2,"session":"s-1","kind":"decision.made","decision":"merge"}',
        b'{"seq":3,"session":"s-1","kind":"notify.sent","channel":"webhook"}',
        b'{"seq":4,"session":"s-1","kind":"notify.failed","channel":"http://secret.example/path?token=x"}',
        b'{"seq":5,"kind":"review.verdict","verdict":17}',  # a field of another type: skipped, no crash
    ])
    after = (value(metrics.reviews, "approve"), value(metrics.decisions, "merge"),
             value(metrics.notifications, "webhook", "sent"), value(metrics.notifications, "other", "failed"),
             value(metrics.events, "review.verdict"))
    assert [a - b for a, b in zip(after, before)] == [1, 1, 1, 1, 1]
    for i in range(metrics.MAX_VALUES + 5):  # free-form values are capped
        metrics.bounded("test_cap", f"v{i}")
    assert metrics.bounded("test_cap", "v-new") == "other"
    assert metrics.bounded("test_cap", "v0") == "v0"


def test_promtool_accepts_a_live_scrape_during_a_session_and_the_alert_rules(daemon_factory, git_repo, tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed (Debian package prometheus; scripts/setup.sh installs it)"
    port = _free_port()
    d = daemon_factory(config=f"metrics_port = {port}\n")
    release = tmp_path / "release"
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "w", "agent": "command", "argv": fake(_usage(10, 2, 0.01), f"waitfile:{release}", "exit:0")}])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    wait_for(lambda: _v(_scrape(port), "orchd_workers", agent="command", state="running") == 1, 20, "a running agent")
    body = _scrape_text(port)
    res = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    release.touch()
    d.wait_session(sid)
    assert d.stop() == 0
    res = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout and "rules found" in res.stdout
