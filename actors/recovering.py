"""What to do about a failed agent run (pure: no I/O; ``now`` and the jitter draw are arguments).

The recovery actor (``actors.recovery``) hands ``decide`` one failed run of
an assignment (``Failed``: the catalogue's code and action from
``worker.failure``, whether the stall limit ended it, what the earlier
relaunches were) and the ``Policy``; it logs the answer as
``recovery.action`` and the session supervisor carries it out.

Rules, in order:

* **usage limit** (code ``usage_limit``, catalogue action ``park``, or a
  rate limit whose message says a usage limit or quota ran out): the reset
  time is read from the message (``actors.quota``); the assignment is
  parked until the reset plus ``quota_margin_s`` and then resumed (a clock
  time printed to the minute that names the minute just begun means now,
  not the same time tomorrow).  Quota
  waits do not count against the relaunch bound; a wait that would last past
  ``max_quota_wait_s`` (counted from the first park of this episode)
  escalates.  No reset time in the message: it is retried like a rate limit
  (backoff, bounded), then escalated.
* **escalate** (not logged in, key rejected, sandbox unavailable, any action
  the policy does not know): the session escalates at once, never retried.
* **no failure recognised** (no ``worker.failure``, not stalled): the
  assignment fails (its exit reason says why).
* **relaunch** (rate limits, overload, 5xx, network, a run the stall
  detector ended, a crash, a refused flag with the adapter's fallback...):
  a ``command`` program only when its assignment says ``retry = true``
  (else it fails: it may not be idempotent).  At most ``max_relaunches``
  relaunches per assignment within ``window_s``; past that the session
  escalates.  Transient causes wait an exponential backoff
  (``backoff_base_s`` doubling per recent relaunch, at least the
  catalogue's ``backoff_s``) with jitter, capped by ``backoff_cap_s``;
  fixes (an env var, a flag) apply at once.  The relaunch resumes the
  agent's own session unless the fix says fresh, the resume target is gone,
  or this run was itself a resume that failed before producing any output
  (a resume that fails or hangs): then it starts fresh with a summary of
  the earlier run.

Every escalation or failure carries ``takeover``: the command a human runs
to carry on by hand in the agent's own session.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from actors import quota
from orchd import protocol as p

TRANSIENT = frozenset({"rate_limited", "overloaded", "server_error", "network", "stalled", "crashed",
                       "usage_limit"})
"""Causes that pass by themselves: waited out with backoff (a fix like an env var or a flag needs none)."""
LOGIN = frozenset({"not_logged_in", "auth_invalid"})
HOST_LOST = "host_lost"
"""The run's agent host went silent (``actors.hostlink``): orchd's failure, not the agent's, so the
assignment is relaunched (fresh, placed anew) whatever its ``retry`` says, within the same bound."""
PENDING = frozenset({"relaunch", "park", "resume_after_quota"})
"""Actions after which the assignment is not finished: the supervisor relaunches it (now or later)."""
SUMMARY_CHARS = 2000
CLOCK_SLACK_S = 120.0  # a reset printed to the minute may name the minute that has just begun


@dataclass(frozen=True)
class Policy:
    max_relaunches: int = 3
    window_s: float = 600.0
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 60.0
    jitter: float = 0.5
    quota_margin_s: float = 30.0
    max_quota_wait_s: float = 21600.0


@dataclass(frozen=True)
class Failed:
    """One failed run of an assignment, and what came before it."""

    agent: str
    failure: p.WorkerFailure | None = None
    stalled: bool = False            # the stall limit ended it (worker.limit stall)
    retry: bool = False              # a ``command`` assignment that may be run again
    session_id: str | None = None    # the agent's own session (resume / take over)
    resumed: bool = False            # this run was launched resuming that session
    produced_output: bool = False    # it reported usage or a result before failing
    relaunch_ts: tuple[float, ...] = ()  # when earlier relaunches of this assignment were decided
    quota_since: float | None = None     # when this episode's first quota park was decided
    reason: str = ""                 # the run's exit reason
    last_text: str = ""              # its last result text (for a fresh start's summary)
    cwd: str = ""                    # where it ran (for the take-over command)


@dataclass(frozen=True)
class Decision:
    action: str  # relaunch | park | escalate | fail
    code: str
    reason: str
    delay_s: float = 0.0
    attempt: int = 0
    until: float | None = None
    reset_at: float | None = None
    resume: bool = False
    env: dict[str, str] = field(default_factory=dict)
    fix: p.Fix | None = None
    summary: str | None = None
    takeover: str | None = None


def code_of(f: Failed) -> str:
    if f.stalled:
        return "stalled"
    return f.failure.code if f.failure is not None else "failed"


def decide(f: Failed, policy: Policy, now: float, draw: float) -> Decision:
    """What to do about ``f`` at ``now`` (unix seconds); ``draw`` in [0, 1) picks the jitter."""
    code = code_of(f)
    message = f.failure.message if f.failure is not None else (f.reason or "the run failed")
    catalogue = "relaunch" if f.stalled else (f.failure.action if f.failure is not None else "fail")
    what = f"{code}: {message}"[:300]
    if code == "usage_limit" or catalogue == "park" or (code in TRANSIENT and quota.is_usage_limit(message)):
        parked = _park(f, policy, code, message, now)
        if parked is not None:
            return parked
        catalogue = "relaunch"  # no reset time: retried like a rate limit, bounded
    if catalogue == "fail":
        return _stop("fail", f, code, what)
    if catalogue != "relaunch":
        lead = f"log in to {f.agent}: " if code in LOGIN else ""
        return _stop("escalate", f, code, lead + what)
    if f.agent == "command" and not f.retry and code != HOST_LOST:
        return _stop("fail", f, code, f"{what} (a command is not run again unless its assignment sets retry = true)")
    recent = [t for t in f.relaunch_ts if now - t < policy.window_s]
    if len(recent) >= policy.max_relaunches:
        return _stop("escalate", f, code, f"relaunch bound reached: {len(recent)} relaunch(es) within "
                                          f"{policy.window_s:g}s; last failure {what}")
    fix = (f.failure.the_fix() if f.failure is not None else None) or p.Fix()
    if code in TRANSIENT:
        raw = max(fix.backoff_s, policy.backoff_base_s) * 2 ** len(recent)
        delay = min(policy.backoff_cap_s, raw * (1.0 - policy.jitter * draw))
    else:
        delay = min(policy.backoff_cap_s, fix.backoff_s)
    hung_resume = f.resumed and not f.produced_output
    fresh = fix.fresh or code == "resume_not_found" or hung_resume
    resume = bool(f.session_id) and not fresh
    summary = summarise(f) if fresh and (hung_resume or code == "resume_not_found") else None
    return Decision(action="relaunch", code=code, reason=what, delay_s=max(delay, 0.0), attempt=len(recent) + 1,
                    until=now + max(delay, 0.0), resume=resume, env=dict(fix.env), fix=fix, summary=summary)


def _park(f: Failed, policy: Policy, code: str, message: str, now: float) -> Decision | None:
    local_now = datetime.fromtimestamp(now).astimezone()
    reset = quota.reset_at(message, local_now)
    if reset is None:
        return None
    early = quota.reset_at(message, local_now - timedelta(seconds=CLOCK_SLACK_S))
    if early is not None and reset.timestamp() - early.timestamp() > 3600 and early.timestamp() >= now - CLOCK_SLACK_S:
        reset = early  # a clock time of this very minute (codex prints minutes), not the same time tomorrow
    reset_ts = reset.timestamp()
    if reset_ts < now - CLOCK_SLACK_S:
        return None  # a reset long past: nothing to wait for, retried like a rate limit
    until = max(reset_ts, now) + policy.quota_margin_s
    since = f.quota_since if f.quota_since is not None else now
    when = reset.isoformat(timespec="seconds")
    if until - since > policy.max_quota_wait_s:
        return _stop("escalate", f, code, f"usage limit resets at {when}: that is past [recovery] max_quota_wait_s "
                                          f"({policy.max_quota_wait_s:g}s); {code}: {message}"[:600],
                     reset_at=reset_ts)
    return Decision(action="park", code=code, reason=f"usage limit: resets at {when}; {message}"[:600],
                    delay_s=until - now, until=until, reset_at=reset_ts, resume=bool(f.session_id))


def _stop(action: str, f: Failed, code: str, reason: str, reset_at: float | None = None) -> Decision:
    return Decision(action=action, code=code, reason=reason, reset_at=reset_at, takeover=takeover(f))


def takeover(f: Failed) -> str | None:
    """The command that carries the run on by hand, in the agent's own session."""
    if f.agent not in ("claude", "codex", "gemini"):
        return None
    where = f"cd {shlex.quote(f.cwd)} && " if f.cwd else ""
    if not f.session_id:
        return f"{where}{f.agent}"
    sid = shlex.quote(f.session_id)
    return where + {"claude": f"claude --resume {sid}", "codex": f"codex exec resume {sid}",
                    "gemini": f"gemini --resume {sid}"}[f.agent]


def fresh_start_files(changed: list[str], most: int = 50) -> str:
    """The line a fresh start's summary gets: the files the earlier runs changed (listed by the
    workspace job that prepared the relaunch's checkout; paths are the agent's, shown as text)."""
    shown = ", ".join(changed[:most])
    more = f" and {len(changed) - most} more" if len(changed) > most else ""
    return f"Files it changed since the assignment started: {shown}{more}."


def summarise(f: Failed) -> str:
    """What a fresh start is told about the earlier run (its last text; its files are in the working tree)."""
    text = " ".join(f.last_text.split())
    if len(text) > SUMMARY_CHARS:
        text = text[:SUMMARY_CHARS - 1] + "…"
    return ("An earlier run of this assignment could not be resumed; you start fresh.\n"
            f"Its last words: {text or '(none)'}\n"
            "The files it changed are in your working directory as it left them: check `git status` and "
            "`git diff` before you go on.")
