"""SIGHUP re-reads the config: live settings apply to the next session, the rest are reported as needing a
restart, and a bad file changes nothing."""

from __future__ import annotations

import json
import signal

from tests.conftest import fake, wait_for, write_plan
from tests.helpers import replay_all


def _events(d, kind: str) -> list[dict]:
    return [e for _, body in replay_all(f"ipc://{d.runtime_dir}/control") if (e := json.loads(body))["kind"] == kind]


def _hanging_session(d, git_repo, tmp_path, name: str) -> dict:
    plan = write_plan(tmp_path / f"{name}.json", [{"name": name, "agent": "command", "argv": fake("line:x", "hang")}])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    return d.wait_session(sid, timeout_s=30)


def test_sighup_applies_a_changed_limit_to_the_next_session_and_reports_an_endpoint_change(
        daemon_factory, git_repo, tmp_path):
    d = daemon_factory(config="[limits]\nstall_s = 600\n")
    rt = d.runtime_dir
    d.config.write_text(f'control_endpoint = "ipc://{rt}/control2"\n[limits]\nstall_s = 0.5\n')
    d.proc.send_signal(signal.SIGHUP)
    reloaded = wait_for(lambda: _events(d, "daemon.reloaded"), 10, "daemon.reloaded")[0]
    assert reloaded["applied"] == ["limits"] and reloaded["needs_restart"] == ["control_endpoint"]
    assert "config_reloaded" in d.log() and "needs_restart" in d.log()
    # the endpoint stays where it was until a restart; the new stall limit ends the next session's silent agent
    s = _hanging_session(d, git_repo, tmp_path, "quiet")
    assert s["state"] == "failed" and "limit stall" in s["workers"][0]["reason"], s
    assert [e["limit"] for e in _events(d, "worker.limit")] == ["stall"]

    # a bad file: one log line and one event, the old config stays, the daemon goes on
    d.config.write_text("[limits]\nstall_s = -1\n")
    d.proc.send_signal(signal.SIGHUP)
    failed = wait_for(lambda: _events(d, "daemon.reload_failed"), 10, "daemon.reload_failed")[0]
    assert "stall_s" in failed["error"]
    lines = [json.loads(line) for line in d.log().splitlines() if line.startswith("{")]
    assert [r["event"] for r in lines].count("config_reload_failed") == 1
    s = _hanging_session(d, git_repo, tmp_path, "quiet2")  # still stall_s = 0.5
    assert s["state"] == "failed" and "limit stall" in s["workers"][0]["reason"], s
    assert d.stop() == 0


def test_which_settings_apply_live_and_which_need_a_restart(tmp_path):
    from orchd import config, reload
    base = {"state_dir": str(tmp_path / "s"), "runtime_dir": str(tmp_path / "r")}
    old = config.Config.model_validate(base)
    new = config.Config.model_validate({**base, "log_level": "debug", "metrics_port": 9464, "pub_hwm": 5,
                                        "agents": {"claude": {"binary": "/opt/claude"}},
                                        "limits": {"max_tokens": 1000}})
    applied, restart = reload.diff(old, new)
    assert applied == ["agents", "limits", "log_level"] and restart == ["metrics_port", "pub_hwm"]
    reload.apply(old, new, applied)
    assert old.limits.max_tokens == 1000 and old.agent("claude").binary == "/opt/claude"
    assert old.metrics_port is None and old.pub_hwm == 100_000  # kept until a restart
    assert reload.diff(old, old) == ([], [])
