"""An agent whose CLI is missing: its assignments move to the next available agent."""

from __future__ import annotations

import json

from tests.agentbin import agent_env_path
from tests.helpers import watch_until_done


def test_missing_agent_is_replaced_by_preference(daemon_factory, git_repo):
    d = daemon_factory(config='agent_preference = ["codex", "claude", "gemini"]\n'
                              '[agents.gemini]\nbinary = "/nonexistent/gemini"\n',
                       env={"PATH": agent_env_path()})
    sid = d.ctl_json("submit", "Do the thing", "--target", str(git_repo), "--rehearse")["session"]
    events = watch_until_done(d, sid, timeout_s=300)
    notes = [e for e in events if e["kind"] == "session.note" and "reassigned" in (e.get("data") or {})]
    assert len(notes) == 1
    assert notes[0]["data"]["reassigned"] == {"design": {"from": "gemini", "to": "codex", "why": "gemini CLI not found"}}
    s = d.status(sid)
    assert s["state"] == "done", s
    assert {w["name"]: w["agent"] for w in s["workers"]} == {"design": "codex", "implement": "claude", "review": "codex"}


def test_no_agent_available_is_a_clear_submit_error(daemon_factory, git_repo):
    d = daemon_factory(config="".join(f'[agents.{a}]\nbinary = "/nonexistent/{a}"\n' for a in ("claude", "codex", "gemini")))
    res = d.ctl("submit", "Do the thing", "--target", str(git_repo), "--json", check=False)
    assert res.returncode == 1
    err = json.loads(res.stdout)["error"]
    assert err["code"] == "bad_request" and "no other agent CLI is available" in err["detail"]
