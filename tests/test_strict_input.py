"""Strict input: what would fail later is refused at the edge, in one line.

Plan files (unknown keys with a "did you mean", names git refuses, NUL
bytes and "=" where exec refuses them, weights out of range) are refused
by orchctl before sending (exit 2) and by the daemon for any other client
(``bad_request``); the daemon's config is checked at load (``orchd run``
and ``orchd check-config`` exit 2 with one line).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors import plans
from orchctl.client import Client
from orchd import config
from orchd import protocol as p
from tests.conftest import ROOT, fake

KNOWN = {"claude", "codex", "gemini", "command"}
ARGV = ["/bin/true"]

# (one assignment's keys beyond name/agent/argv, or a whole assignment; what the error must say)
BAD_PLANS = [
    ({"name": "a", "agent": "command", "argv": ARGV, "promt": "x"},
     "assignment 'a': unknown key 'promt' (did you mean 'prompt'?; valid: name, agent, role, prompt, weight, "
     "after, argv, env, profile, rerun, retry)"),
    ({"name": "a", "agent": "command", "argv": ARGV, "run_kind": "planner"},
     "assignment 'a': 'run_kind' is reserved for orchd's own runs"),
    ({"name": "a", "agent": "command", "argv": ARGV, "wieght": 3}, "did you mean 'weight'?"),
    ({"name": "a\x01b", "agent": "command", "argv": ARGV}, "it holds '\\x01'"),
    ({"name": "a..b", "agent": "command", "argv": ARGV}, "cannot hold '..'"),
    ({"name": "x.lock", "agent": "command", "argv": ARGV}, "cannot end with '.lock'"),
    ({"name": "n" * 201, "agent": "command", "argv": ARGV}, "201 bytes long; at most 200"),
    ({"name": "é" * 101, "agent": "command", "argv": ARGV}, "202 bytes long; at most 200"),
    ({"name": "a", "agent": "command", "argv": ["/bin/echo", "x\x00y"]}, "assignment 'a': argv[1] holds a NUL byte"),
    ({"name": "a", "agent": "command", "argv": ARGV, "env": {"K\x00": "v"}}, "holds a NUL byte"),
    ({"name": "a", "agent": "command", "argv": ARGV, "env": {"K": "v\x00"}}, "assignment 'a': env 'K' holds a NUL byte"),
    ({"name": "a", "agent": "command", "argv": ARGV, "env": {"A=B": "v"}}, "env key 'A=B' is not a variable name"),
    ({"name": "a", "agent": "command", "argv": ARGV, "env": {"": "v"}}, "env key '' is not a variable name"),
    ({"name": "a", "agent": "command", "argv": ["x" * (128 * 1024)]}, "argv[0] is 131072 bytes long"),
    ({"name": "a", "agent": "claude", "prompt": "do\x00it"}, "assignment 'a': prompt holds a NUL byte"),
    ({"name": "a", "agent": "command", "argv": ARGV, "weight": 1e308}, "weight must be a number from 0 to 1e+06"),
    ({"name": "a", "agent": "command", "argv": ARGV, "profile": "readonli"}, "did you mean 'readonly'?"),
]
IDS = [f"case{i}" for i in range(len(BAD_PLANS))]


def _plan(assignment: dict) -> dict:
    return {"assignments": [assignment]}


# ---------------------------------------------------------------- pure: the plan checks

@pytest.mark.parametrize("assignment,needle", BAD_PLANS, ids=IDS)
def test_bad_plans_are_refused_with_a_one_line_reason(assignment, needle):
    for check in (lambda d: plans.parse_plan(d), lambda d: plans.load_plan(d, KNOWN)):
        with pytest.raises(plans.PlanError) as caught:
            check(_plan(assignment))
        text = str(caught.value)
        assert text.startswith("invalid plan: ") and needle in text and "\n" not in text, text


def test_unknown_top_level_key_names_the_valid_ones():
    with pytest.raises(plans.PlanError, match=r"the plan: unknown key 'assignment' \(did you mean 'assignments'\?; "
                                              r"valid: assignments\)"):
        plans.parse_plan({"assignment": []})


def test_an_assignment_without_a_name_is_labelled_by_its_index():
    with pytest.raises(plans.PlanError, match=r"assignments\[1\]: unknown key 'agnt'"):
        plans.parse_plan({"assignments": [{"name": "a", "agent": "claude"}, {"agnt": "claude"}]})


def test_the_strict_plan_struct_keeps_every_user_field_of_the_wire_spec():
    wire_fields = set(p.AssignmentSpec.__struct_fields__) - set(plans.RESERVED_KEYS)
    assert set(plans.ASSIGNMENT_KEYS) == wire_fields
    full = {"name": "a", "agent": "command", "role": "r", "prompt": "x", "weight": 2, "after": [],
            "argv": ["/bin/true"], "env": {"K": "v"}, "profile": "yolo", "rerun": True}
    [spec] = plans.load_plan(_plan(full), KNOWN)
    assert spec == p.AssignmentSpec(**{**full, "weight": 2.0})


def test_good_names_at_the_edges_pass():
    for name in ("n" * 200, "a.b", "a-b_c", "é" * 100, "x.locked"):
        assert plans.load_plan(_plan({"name": name, "agent": "command", "argv": ARGV}), KNOWN)[0].name == name


def test_the_submit_and_launch_name_rules_agree():
    from actors import worktrees as wt
    for name in ("a..b", "x.lock", "n" * 201, "a\x7fb", "_x", "ok", "a.b"):
        at_launch = wt.assignment_name_problem(name)
        try:
            plans.parse_plan(_plan({"name": name, "agent": "command", "argv": ARGV}))
        except plans.PlanError:
            assert at_launch is not None, name
        else:
            assert at_launch is None, name
            wt.branch_name("s-1", name)  # does not raise


def test_the_closed_sets_match_their_owners():
    from typing import get_args

    from actors.agents import ADAPTERS
    from actors.agents.base import PROFILES
    assert set(get_args(config.AgentName)) == set(ADAPTERS)
    assert set(get_args(config.Profile)) == set(PROFILES) == set(plans.PROFILES)


# ---------------------------------------------------------------- pure: the config checks

@pytest.mark.parametrize("toml,needle", [
    ('log_lvl = "x"\n', "unknown key 'log_lvl' (did you mean 'log_level'?; valid: state_dir, "),
    ('[limits]\nstal_s = 3\n', "unknown key 'limits.stal_s' (did you mean 'stall_s'?; valid: wall_time_s, "),
    ('[limits]\nstall_s = -5\n', "limits.stall_s: Input should be greater than 0, got -5"),
    ('[agents.claud]\nprofile = "workspace"\n', "agents.claud: unknown agent 'claud' (did you mean 'claude'?"),
    ('[agents.claude]\nprofil = "yolo"\n', "unknown key 'agents.claude.profil' (did you mean 'profile'?"),
    ('[agents.codex]\nprofile = "readonli"\n',
     "agents.codex.profile: invalid value 'readonli' (did you mean 'readonly'?; valid: workspace, readonly, yolo)"),
    ('log_format = "jsn"\n', "log_format: invalid value 'jsn' (did you mean 'json'?; valid: auto, json, console)"),
    ('log_level = "verbose"\n', "log_level: invalid value 'verbose' (valid: debug, info, warning, error, critical)"),
    ('agent_preference = ["claude", "codx"]\n', "agent_preference[1]: unknown agent 'codx' (did you mean 'codex'?"),
    ('[[roles]]\nname = "a"\nagent = "gpt"\nrole = "x"\nweight = 1\n', "roles[0].agent: unknown agent 'gpt' (valid: "),
    ('[[roles]]\nname = "a"\nagent = "claude"\nrole = "x"\nweigth = 1\n',
     "unknown key 'roles[0].weigth' (did you mean 'weight'?"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, toml, needle):
    f = tmp_path / "orchd.toml"
    f.write_text(toml)
    with pytest.raises(config.ConfigError) as caught:
        config.load(f, environ={})
    assert needle in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_good_config_values_pass(tmp_path):
    f = tmp_path / "orchd.toml"
    f.write_text('log_level = "DEBUG"\nlog_format = "console"\nagent_preference = ["gemini", "command"]\n'
                 '[agents.command]\nprofile = "yolo"\n[[roles]]\nname = "a"\nagent = "codex"\nrole = "r"\nweight = 1\n')
    cfg = config.load(f, environ={})
    assert (cfg.log_level, cfg.log_format, cfg.agent("command").profile) == ("debug", "console", "yolo")


# ---------------------------------------------------------------- orchd run / check-config

def _orchd(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHD_")}
    return subprocess.run([sys.executable, "-m", "orchd.app", *args], capture_output=True, timeout=60,
                          cwd=ROOT, env=env)


def _one_line(res: subprocess.CompletedProcess, start: str, needle: str = "") -> str:
    assert res.returncode == 2, res.stderr
    lines = res.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start) and needle in lines[0], lines
    assert b"Traceback" not in res.stderr
    return lines[0]


def test_check_config(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[limits]\nstall_s = 30\n[agents.claude]\nprofile = "readonly"\n')
    res = _orchd("check-config", str(good))
    assert (res.returncode, res.stdout, res.stderr) == (0, b"ok\n", b"")
    bad = tmp_path / "bad.toml"
    bad.write_text('[agents.claude]\nprofile = "root"\n')
    _one_line(_orchd("check-config", str(bad)), f"orchd: bad configuration {bad}: ",
              "agents.claude.profile: invalid value 'root'")
    broken = tmp_path / "broken.toml"
    broken.write_text("[limits\n")
    _one_line(_orchd("check-config", str(broken)), f"orchd: bad configuration {broken}: ")
    _one_line(_orchd("check-config", str(tmp_path / "missing.toml")), "orchd: bad configuration ", "No such file")


def test_run_with_a_bad_config_exits_2_with_one_line(tmp_path, short_tmp):
    bad = tmp_path / "bad.toml"
    bad.write_text('log_formt = "json"\n')
    res = _orchd("run", "--config", str(bad), "--state-dir", str(tmp_path / "state"),
                 "--runtime-dir", str(short_tmp / "rt"))
    _one_line(res, "orchd: bad configuration: ", "unknown key 'log_formt' (did you mean 'log_format'?")
    assert not (short_tmp / "rt").exists()  # refused before anything was made


# ---------------------------------------------------------------- orchctl: usage errors before sending

def _submit_offline(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """submit against a runtime dir with no daemon: a check that passes would end in exit 3."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHD_")}
    return subprocess.run([sys.executable, "-m", "orchctl.cli", "submit", "task", "--target", str(tmp_path),
                           "--runtime-dir", str(tmp_path / "none"), *args],
                          capture_output=True, timeout=60, cwd=ROOT, env=env)


@pytest.mark.parametrize("assignment,needle", BAD_PLANS, ids=IDS)
def test_orchctl_refuses_bad_plans_before_sending(tmp_path, assignment, needle):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(_plan(assignment)))
    _one_line(_submit_offline(tmp_path, "--plan", str(plan)), f"orchctl: invalid plan {plan}: ", needle)


def test_orchctl_refuses_a_lone_surrogate_before_sending(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text('{"assignments": [{"name": "a", "agent": "command", "argv": ["\\ud800"]}]}')
    _one_line(_submit_offline(tmp_path, "--plan", str(plan)), "orchctl: invalid plan ", "lone surrogate")


def test_orchctl_refuses_an_unknown_key_in_a_toml_plan(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text("[[assignments]]\nname = 'w'\nagent = 'claude'\npromt = 'x'\n")
    _one_line(_submit_offline(tmp_path, "--plan", str(plan)), f"orchctl: invalid plan {plan}: ",
              "assignment 'w': unknown key 'promt' (did you mean 'prompt'?")


def test_orchctl_refuses_a_negative_stall(tmp_path):
    _one_line(_submit_offline(tmp_path, "--limit", "stall_s=-5"), "orchctl: invalid limit stall_s=-5: ")


def test_a_good_plan_passes_the_client_check(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(_plan({"name": "a", "agent": "command", "argv": ARGV, "env": {"K": "v=w"},
                                      "weight": 1e6})))
    res = _submit_offline(tmp_path, "--plan", str(plan))
    assert res.returncode == 3, res.stderr  # checked, then the (absent) daemon was asked


# ---------------------------------------------------------------- the daemon refuses them too

def test_the_daemon_refuses_bad_input_from_any_client(daemon, git_repo):
    c = Client(f"ipc://{daemon.runtime_dir}/control", timeout_s=10)
    try:
        for assignment, needle in BAD_PLANS:
            reply = c.call(p.Submit(target=str(git_repo), plan=_plan(assignment)))
            assert isinstance(reply, p.Error) and reply.code == p.ErrorCode.BAD_REQUEST, (assignment, reply)
            assert reply.detail.startswith("invalid plan: ") and needle in reply.detail, reply.detail
        reply = c.call(p.Submit(target=str(git_repo), plan={"assignments": [], "extra": 1}))
        assert isinstance(reply, p.Error) and "the plan: unknown key 'extra'" in reply.detail, reply
        reply = c.call(p.Submit(target=str(git_repo), task="go", limits={"stall_s": -5}))
        assert isinstance(reply, p.Error) and reply.code == p.ErrorCode.BAD_REQUEST, reply
        assert "limits.stall_s" not in reply.detail and "stall_s: Input should be greater than 0" in reply.detail
        reply = c.call(p.Submit(target=str(git_repo), task="go", limits={"stal_s": 5}))
        assert isinstance(reply, p.Error) and "unknown key 'stal_s' (did you mean 'stall_s'?" in reply.detail, reply
        reply = c.call(p.Submit(target=str(git_repo), task="do\x00it"))
        assert isinstance(reply, p.Error) and reply.detail == "the task text holds a NUL byte", reply
        # still serving, and a good plan still runs
        ok = c.call(p.Submit(target=str(git_repo), plan=_plan({"name": "a", "agent": "command",
                                                              "argv": fake("exit:0")})))
        assert isinstance(ok, p.SubmitReply), ok
    finally:
        c.close()
    assert daemon.wait_session(ok.session)["state"] == "done"
