"""The launch recipe: everything one run of one assignment needs (pure).

Given the session, the assignment, the decision to launch it and what the
supervisor found out beforehand (its worktree, the agent's binary, the
rehearsal environment), ``recipe`` returns the ``WorkerSpec`` the worker
actor runs and the ``worker.launching`` event that records it.  No file,
process or clock is touched here; ``run_dirs`` names the directories the
caller must create.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from actors import prompts
from actors.agents.base import RunSpec
from actors.decide import Launch
from actors.sessions import SessionView, WorkerView
from actors.worker import WorkerSpec
from orchd import protocol as p
from orchd.config import Config, Limits


@dataclass(frozen=True)
class Found:
    """What the supervisor looked up before launching (the impure part)."""

    cwd: str                      # the worktree, or the target when it is not a git repository
    branch: str | None
    binary: str | None            # the agent CLI's absolute path (None: let the adapter decide)
    home: str | None              # HOME for the run (rehearsals get their own)
    rehearsal_env: dict[str, str]  # env pointing the CLI at the session's scripted model server
    plan_error: str | None = None  # the planner's previous invalid answer, when asking again
    output_schema: str | None = None       # a reviewer's answer schema (JSON)
    output_schema_file: str | None = None  # ... written to this file (codex reads it from a file)


PROMPT_ENV_MAX = 100_000  # one environment string may hold at most 128 KiB on Linux


BASE_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "LC_*", "TERM", "COLORTERM", "NO_COLOR", "TZ", "USER", "LOGNAME",
            "SHELL", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME",
            "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy",
            "all_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS")
"""The daemon's variables every agent gets (when set): where programs and the user's files are, the
locale and terminal, the user's name, and how to reach the network (proxies, CA certificates).
``TMPDIR`` is not among them: each run gets a private one."""

AGENT_ENV = {
    "claude": ("ANTHROPIC_*", "CLAUDE_*", "IS_SANDBOX"),
    "codex": ("OPENAI_*", "CODEX_*"),
    "gemini": ("GEMINI_*", "GOOGLE_*"),
    "command": (),
}
"""What each adapter's CLI needs besides ``BASE_ENV``: its API keys, endpoints and config dirs
(``NAME_*`` is a prefix).  A ``command`` program gets only ``BASE_ENV``, its ``env`` and the pass list."""


def _passes(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    return any(name.startswith(pat[:-1]) if pat.endswith("*") else name == pat for pat in patterns)


def agent_env(environ: dict[str, str] | os._Environ, agent: str, passed: list[str]) -> dict[str, str]:
    """The part of the daemon's ``environ`` an ``agent`` run starts from (pure).

    ``BASE_ENV``, the adapter's ``AGENT_ENV`` and the configured pass list
    (``agent_env_pass`` and ``[agents.<name>] env_pass``); nothing else of
    the daemon's environment.  The worker adds the adapter's launch env
    (private TMPDIR, per-run HOME...), the assignment's ``env``, the
    rehearsal's and a relaunch fix's variables on top.
    """
    keep = (*BASE_ENV, *AGENT_ENV.get(agent, ()), *passed)
    return {k: v for k, v in environ.items() if _passes(k, keep)}


def run_dirs(cfg: Config, session: str, assignment: str, gen: int) -> tuple[Path, Path]:
    """(run dir, private TMPDIR) of one generation of one assignment."""
    run_dir = cfg.state_dir / "runs" / session / assignment / str(gen)
    return run_dir, run_dir / "tmp"


def rehearsal_home(cfg: Config, session: str, assignment: str) -> Path:
    return cfg.state_dir / "homes" / session / assignment


def resume_id(w: WorkerView, resume: bool) -> str | None:
    """The agent's own session to resume, in its CLI's terms (gemini resumes ``latest``)."""
    if not resume or w.spec.agent == "command" or not w.agent_session_id:
        return None
    return "latest" if w.spec.agent == "gemini" else w.agent_session_id


def prompt(s: SessionView, w: WorkerView, rid: str | None, reason: str | None, plan_error: str | None,
           agents: list[str], answer: tuple[str, str] | None = None) -> str:
    a = w.spec
    if w.run_kind == "reviewer":
        return a.prompt
    if answer is not None:
        lead = "" if rid else (a.prompt if a.agent == "command" else prompts.prompt_for(s.task, a, _before(s, w)))
        lead = lead + "\n\n" if lead else ""
        return lead + prompts.answer_prompt(a.name, answer[0], w.warnings, answer[1])
    if rid:
        return prompts.resume_prompt(a.name, reason, w.warnings)
    if w.run_kind == "planner":
        return prompts.planner_prompt(s.task, agents, plan_error)
    if a.agent == "command":  # a program's prompt is its own; review concerns are added for it to read
        return prompts.with_concerns(a.prompt, _before(s, w), w.warnings)
    return prompts.prompt_for(s.task, a, _before(s, w), w.warnings)


def _before(s: SessionView, w: WorkerView) -> list:
    """The assignments ``w`` builds on: their summaries, where their files are, their review concerns."""
    return [(s.workers[d].spec, s.workers[d].result_text, s.workers[d].branch, s.workers[d].warnings)
            for d in w.spec.after]


def recipe(cfg: Config, limits: Limits, s: SessionView, w: WorkerView, cmd: Launch, found: Found,
           agents: list[str], start_paused: bool = False) -> tuple[WorkerSpec, p.WorkerLaunching]:
    a = w.spec
    gen = w.gen + 1
    acfg = cfg.agent(a.agent)
    rid = resume_id(w, cmd.resume)
    _, tmpdir = run_dirs(cfg, s.id, a.name, gen)
    extra_env = dict(found.rehearsal_env)
    if found.binary and a.agent != "command":  # codex and gemini are node scripts whose helpers live beside them
        extra_env["PATH"] = os.pathsep.join([os.path.dirname(found.binary), os.environ.get("PATH", os.defpath)])
    extra_env.update(cmd.env)
    text = prompt(s, w, rid, cmd.reason, found.plan_error, agents, cmd.answer)
    if a.agent == "command" and text:  # a program may read its prompt (a reviewer's, an answer) here
        extra_env["ORCHD_PROMPT"] = text[:PROMPT_ENV_MAX]
    reviewer = w.run_kind == "reviewer"
    run = RunSpec(prompt=text, cwd=found.cwd,
                  profile="readonly" if reviewer else a.profile or acfg.profile, binary=found.binary, model=acfg.model,
                  max_turns=limits.max_turns, resume_id=rid, home=found.home,
                  config_dir=(str(Path(found.home) / ".codex") if found.home and a.agent == "codex" else None),
                  tmpdir=str(tmpdir), allow_unconfined=cfg.allow_unconfined, argv=a.argv, env=a.env,
                  output_schema=found.output_schema if reviewer else None,
                  output_schema_file=found.output_schema_file if reviewer else None,
                  # a relaunch after bad_flag (Fix.fallback) uses the adapter's fallback launch
                  fallback=cmd.fallback)
    spec = WorkerSpec(session=s.id, name=a.name, agent=a.agent, gen=gen, run=run,
                      wall_time_s=min(limits.wall_time_s, cfg.review.deadline_s) if reviewer else limits.wall_time_s,
                      stall_s=min(limits.stall_s, cfg.review.deadline_s) if reviewer else limits.stall_s,
                      max_line_bytes=cfg.max_line_bytes, stop_grace_s=cfg.stop_grace_s, nice=cfg.agent_nice,
                      state_dir=str(cfg.state_dir), allow_unconfined=cfg.allow_unconfined,
                      extra_env=extra_env, start_delay_s=cmd.delay_s, start_paused=start_paused,
                      base_env=agent_env(os.environ, a.agent, [*cfg.agent_env_pass, *acfg.env_pass]))
    ev = p.WorkerLaunching(resume=bool(rid), worktree=found.cwd if found.branch else None, branch=found.branch,
                           reason=cmd.reason, delay_s=cmd.delay_s)
    return spec, ev

