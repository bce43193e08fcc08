"""Human-readable output of orchctl (tables, event lines); ``--json`` output bypasses this.

Everything shown here may come from an agent (its text, its stderr, the
names in a plan), so every string goes through ``clean`` first: control
characters (C0, DEL, C1) are shown as ``\\xNN`` and cannot move the cursor,
clear the screen or set the terminal's title.
"""

from __future__ import annotations

import json
import re
import time

from orchd import protocol as p

SUMMARY_MAX = 160
SHORT_MAX = 80

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_KEEP_NL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _escape(m: re.Match) -> str:
    return f"\\x{ord(m.group()):02x}"


def clean(text: object, keep_newlines: bool = False) -> str:
    """``text`` as a string with every control character made visible (``ESC`` → ``\\x1b``).

    Newlines become `` ⏎ `` (one line per event) unless ``keep_newlines``.
    """
    s = str(text)
    if not keep_newlines:
        s = s.replace("\r\n", "\n").replace("\n", " ⏎ ")
        return _CONTROL.sub(_escape, s)
    return _CONTROL_KEEP_NL.sub(_escape, s)


def short(value: object, limit: int = SHORT_MAX) -> str:
    """A compact one-line, escaped form of any JSON value, cut at ``limit`` characters."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = clean(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def table(rows: list[list[str]], headers: list[str]) -> str:
    rows = [[clean(x) for x in r] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers)] + [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h04m``, ``3d02h``: a length of time, compactly."""
    n = max(0, int(seconds))
    if n < 60:
        return f"{n}s"
    if n < 3600:
        return f"{n // 60}m{n % 60:02d}s"
    if n < 86400:
        return f"{n // 3600}h{n % 3600 // 60:02d}m"
    return f"{n // 86400}d{n % 86400 // 3600:02d}h"


def _when(ts: float | None) -> str:
    if not ts:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def elapsed(started: float | None, ended: float | None, now: float) -> str:
    """How long it ran (``ended``) or has been running (``now``); empty when it never started."""
    if not started:
        return ""
    return duration((ended or now) - started)


def cost(usd: float | None, rehearsal: bool) -> str:
    """``$0.0123``; a rehearsal's says it is not money spent.  Empty when no agent reported a cost."""
    if usd is None:
        return ""
    return f"${usd:.4f}" + (" (rehearsal, not billed)" if rehearsal else "")


def take_result(s: p.SessionInfo) -> str | None:
    """How to take a ``done`` session's result into the target (None before then)."""
    if s.state != "done" or not s.branch:
        return None
    import shlex
    return f"take the result: git -C {shlex.quote(clean(s.target))} merge {shlex.quote(clean(s.branch))}"


def ended_line(s: p.SessionInfo) -> str:
    """One line for a session that ended: state, duration, cost, and for ``done`` how to take the result."""
    out = f"session {clean(s.id)} ended {s.state}"
    if s.started_at:
        out += f" after {elapsed(s.started_at, s.ended_at, s.ended_at or s.started_at)}"
    if s.cost_usd is not None:
        out += f", cost {cost(s.cost_usd, s.rehearse)}"
    elif s.rehearse:
        out += " (rehearsal)"
    if (take := take_result(s)) is not None:
        out += f"; {take}"
    return out


def session(s: p.SessionInfo, now: float | None = None) -> str:
    """A session's status: a head line (state, progress, times, cost, branch) and its workers' table.

    ``now`` (unix seconds) gives the elapsed time of what still runs.
    """
    now = time.time() if now is None else now
    head = f"session {clean(s.id)}  {s.state}  {s.progress * 100:.0f}%"
    if s.reason:
        head += f"  ({clean(s.reason)})"
    if s.branch:
        head += f"  branch {clean(s.branch)}"
    if s.waiting_for == "quota":
        head += (f"\nwaiting for a usage limit to reset at {_when(s.quota_reset_at)}; resumes by itself at "
                 f"{_when(s.quota_resume_at)} (orchctl recoveries {clean(s.id)})")
    elif s.waiting_for:
        head += f"\nwaiting for an {clean(s.waiting_for)}: {clean(s.question or '')}\n" \
                f"  answer with: orchctl answer {clean(s.id)} \"TEXT\""
    lines = [head]
    times = []
    if s.started_at:
        times.append(f"started {_when(s.started_at)}")
        times.append(f"ended {_when(s.ended_at)} after {elapsed(s.started_at, s.ended_at, now)}" if s.ended_at
                     else f"elapsed {elapsed(s.started_at, None, now)}")
    else:
        times.append(f"submitted {_when(s.created_ts)}")
    tokens = s.input_tokens + s.output_tokens
    if tokens or s.cost_usd is not None:
        times.append(f"tokens {tokens}" + (f", cost {cost(s.cost_usd, s.rehearse)}" if s.cost_usd is not None else ""))
    if s.rehearse and s.cost_usd is None:
        times.append("rehearsal")
    lines.append("  " + "; ".join(times))
    if (take := take_result(s)) is not None:
        lines.append("  " + take)
    rows = [[w.name, w.agent + (f"@{clean(w.host)}" if w.host else ""), w.state, "" if w.exit_code is None else w.exit_code, w.gen,
             f"{w.progress * 100:.0f}%", w.milestones, w.input_tokens + w.output_tokens,
             cost(w.cost_usd, False) + (" (rehearsal)" if s.rehearse and w.cost_usd is not None else ""),
             _when(w.started_at)[11:], elapsed(w.started_at, w.ended_at, now),
             f"{w.review_round} {w.last_decision}" if w.last_decision else (w.review_round or ""), w.reason or ""]
            for w in s.workers]
    return "\n".join(lines) + "\n" + table(rows, ["WORKER", "AGENT", "STATE", "EXIT", "GEN", "PROGRESS",
                                                  "MILESTONES", "TOKENS", "COST", "STARTED", "ELAPSED",
                                                  "REVIEW", "REASON"])


def reviews(rs: list[p.ReviewInfo]) -> str:
    if not rs:
        return "no reviews"
    lines = []
    for r in rs:
        lines.append(f"review {clean(r.id)}  {clean(r.assignment)} round {r.round}  "
                     f"{clean(r.decision or 'in progress')}  commit {clean((r.commit or '-')[:12])}")
        lines.append(f"  triggers: {short('; '.join(r.triggers), 200)}")
        for v in r.verdicts:
            lines.append(f"  {clean(v.reviewer)} ({clean(v.agent)}): {clean(v.verdict)} — {short(v.summary, 160)}"
                         + (f" [{short(v.reason, 80)}]" if v.reason else ""))
    return "\n".join(lines)



def recoveries(rs: list[p.RecoveryInfo]) -> str:
    """``orchctl recoveries``: one line per failed run (detected code, action), the take-over command below."""
    if not rs:
        return "no failures"
    rows = []
    for r in rs:
        detail = r.reason or r.message
        if r.action == "park" and r.until:
            detail = f"until {_when(r.until)}; {detail}"
        elif r.action == "relaunch":
            detail = f"after {r.delay_s:g}s; {detail}"
        rows.append([_when(r.ts)[11:], clean(r.worker), f"g{r.gen}", clean(r.code), clean(r.action or "deciding"),
                     r.attempt or "", short(detail, 100)])
    out = table(rows, ["TIME", "WORKER", "GEN", "CODE", "ACTION", "ATTEMPT", "DETAIL"])
    for r in rs:
        if r.takeover:
            out += f"\ntake over {clean(r.worker)} by hand: {clean(r.takeover)}"
    return out


def sessions(ss: list[p.SessionInfo], now: float | None = None) -> str:
    if not ss:
        return "no sessions"
    now = time.time() if now is None else now
    rows = [[s.id, s.state, f"{s.progress * 100:.0f}%", len(s.workers),
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.created_ts)),
             elapsed(s.started_at, s.ended_at, now),
             cost(s.cost_usd, False) + (" (rehearsal)" if s.rehearse and s.cost_usd is not None else ""),
             s.task[:40]] for s in ss]
    return table(rows, ["SESSION", "STATE", "PROGRESS", "WORKERS", "CREATED", "ELAPSED", "COST", "TASK"])


# ---------------------------------------------------------------- event summaries

STAMP_FIELDS = ("seq", "ts", "session", "worker", "agent", "gen", "prev", "kind")

# The input keys that say most about a tool call, most telling first.
_INPUT_KEYS = ("command", "cmd", "file_path", "path", "absolute_path", "pattern", "url", "query", "description")


def _reason(r: object) -> str:
    return f" ({r})" if r else ""


def _tool_input(value: object) -> str:
    if isinstance(value, dict):
        for key in _INPUT_KEYS:
            if value.get(key) not in (None, ""):
                v = value[key]
                return short(" ".join(map(str, v)) if isinstance(v, list) else v)
    return short(value)


def _recovery_action(e: dict) -> str:
    action = e.get("action")
    out = f"recovery: {action}"
    if action == "relaunch":
        out += f" #{e.get('attempt')} after {e.get('delay_s')}s" + (" (resume)" if e.get("resume") else " (fresh)")
    elif action == "park" and e.get("until"):
        out += f" until {_when(e.get('until'))}"
    out += f" — {e.get('reason')}" if e.get("reason") else ""
    if e.get("takeover"):
        out += f"; take over: {e['takeover']}"
    return out


def _assignments(specs: object) -> str:
    if not isinstance(specs, list):
        return ""
    names = [f"{a.get('name', '?')}({a.get('agent', '?')})" if isinstance(a, dict) else str(a) for a in specs]
    return ", ".join(names) if names else "no assignments"


def _usage(ev: dict, rehearsal: bool = False) -> str:
    tin, tout = ev.get("input_tokens") or 0, ev.get("output_tokens") or 0
    usd = ev.get("cost_usd")
    if usd is None:
        return f"tokens in={tin} out={tout}" + (" (rehearsal)" if rehearsal else "")
    return f"tokens in={tin} out={tout} cost={cost(usd, rehearsal)}"


def _started(ev: dict) -> str:
    argv = ev.get("argv") or []
    prog = str(argv[0]).rsplit("/", 1)[-1] if argv else "?"
    out = f"pid {ev.get('pid')} {prog}" + (f" version {ev['agent_version']}" if ev.get("agent_version") else "")
    if ev.get("resumed_from"):
        out += f" resumed from {ev['resumed_from']}"
    if ev.get("confined") is not None:
        out += " confined" if ev["confined"] else " not confined"
    return out


def _submitted(ev: dict) -> str:
    out = f"task {short(ev['task'], 60)!r} " if ev.get("task") else ""
    out += f"target {ev.get('target')}"
    if ev.get("planner"):
        return out + f", planner {ev['planner']}"
    return out + f": {_assignments(ev.get('assignments'))}"


def _exited(ev: dict) -> str:
    out = str(ev.get("state"))
    if ev.get("exit_code") is not None:
        out += f" exit={ev['exit_code']}"
    if ev.get("signal") is not None:
        out += f" signal={ev['signal']}"
    return out + _reason(ev.get("reason"))


def _failure(ev: dict) -> str:
    out = f"{ev.get('code')}: {ev.get('message')} → {ev.get('action', 'escalate')}"
    fix = ev.get("remedy") or ev.get("fix")
    return out + (f" fix {short(fix, 60)}" if fix else "")


def _preflight(ev: dict) -> str:
    parts = []
    findings = ev.get("findings")
    for f in findings if isinstance(findings, list) else []:
        if not isinstance(f, dict):
            continue
        fix = f.get("fix")
        tag = "fixed" if f.get("fixed") else ("BLOCKING" if f.get("blocking") else "warning")
        parts.append(f"{f.get('code')} ({tag}{': ' + str(fix) if fix else ''})")
    return "preflight: " + ("; ".join(parts) or "nothing found")


def _launching(ev: dict) -> str:
    out = "resume" if ev.get("resume") else "fresh start"
    if ev.get("branch"):
        out += f" on {ev['branch']}"
    if ev.get("delay_s"):
        out += f" after {ev['delay_s']:g}s"
    return out + _reason(ev.get("reason"))


def _bad_line(ev: dict) -> str:
    out = f"{ev.get('problem')} on {ev.get('stream', 'stdout')}"
    if ev.get("size"):
        out += f" ({ev['size']} bytes)"
    return out + (f": {ev['preview']}" if ev.get("preview") else "")


_SUMMARIES = {
    "agent.session": lambda e: f"agent session {e.get('agent_session_id')}"
                               + (f" model {e['model']}" if e.get("model") else ""),
    "agent.text": lambda e: e.get("text") or "(empty text)",
    "agent.tool_call": lambda e: f"{e.get('tool')} {_tool_input(e.get('input'))}".rstrip(),
    "agent.tool_result": lambda e: ("ok" if e.get("ok") else "failed")
                                   + (f" {short(e.get('output'))}" if e.get("output") not in (None, "") else ""),
    "agent.usage": _usage,
    "agent.error": lambda e: ("fatal: " if e.get("fatal") else "") + str(e.get("message")),
    "agent.result": lambda e: ("ok" if e.get("ok") else "failed") + (f": {e['text']}" if e.get("text") else ""),
    "agent.unknown": lambda e: f"unparsed: {e.get('raw')}",
    "agent.output": lambda e: f"output {short(e.get('data'), SUMMARY_MAX)}",
    "worker.started": _started,
    "worker.exited": _exited,
    "worker.state": lambda e: f"{e.get('state')}{_reason(e.get('reason'))}",
    "worker.log": lambda e: (f"[{e['stream']}] " if e.get("stream", "stderr") != "stderr" else "")
                            + (e.get("line") or "(empty line)"),
    "worker.bad_line": _bad_line,
    "worker.milestone": lambda e: f"milestone: {e.get('text')}",
    "worker.blocker": lambda e: f"blocker: {e.get('text')}",
    "worker.review_request": lambda e: f"review requested: {e.get('text')}",
    "worker.done": lambda e: f"done: {e.get('text')}",
    "worker.committed": lambda e: (f"committed {str(e.get('commit'))[:12]} on {e.get('branch')}"
                                   if e.get("made", True) else f"nothing new on {e.get('branch')}")
                                  + (f"; left out {', '.join(map(str, e['left_out']))}"
                                     + (f" and {e['left_out_more']} more" if e.get("left_out_more") else "")
                                     if e.get("left_out") else ""),
    "worker.limit": lambda e: f"limit {e.get('limit')} reached" + (f": {e['detail']}" if e.get("detail") else ""),
    "worker.failure": _failure,
    "worker.launching": _launching,
    "worker.preflight": _preflight,
    "session.submitted": _submitted,
    "session.planned": lambda e: f"plan ({e.get('source')}): {_assignments(e.get('assignments'))}"
                                 + (f" — {e['note']}" if e.get("note") else ""),
    "session.state": lambda e: f"{e.get('state')}{_reason(e.get('reason'))}",
    "session.warning": lambda e: f"warning: {e.get('message')}",
    "session.note": lambda e: str(e.get("message")) + (f" {short(e['data'], 60)}" if e.get("data") else ""),
    "session.stop_requested": lambda e: f"stop requested: {e.get('reason')} → {e.get('end_state', 'stopped')}",
    "session.merged": lambda e: f"merged into {e.get('branch')} at {str(e.get('commit'))[:12]}",
    "worker.question": lambda e: f"question: {e.get('text')}",
    "review.requested": lambda e: f"review {e.get('review_id')} of {e.get('assignment')} round {e.get('round')} "
                                  f"at {str(e.get('commit'))[:12]} by {', '.join(map(str, e.get('reviewers') or []))}"
                                  f" ({len(e.get('triggers') or [])} trigger(s))",
    "review.run": lambda e: f"reviewer run for review {e.get('review_id')} (attempt {e.get('attempt', 1)})",
    "review.verdict": lambda e: f"{e.get('reviewer')}: {e.get('verdict')} — {e.get('summary')}"
                                + (f" [mismatch: {e['mismatch']}]" if e.get("mismatch") else ""),
    "decision.made": lambda e: f"decision {e.get('decision')} for {e.get('assignment')}: {e.get('reason')}",
    "review.warning": lambda e: f"warning about {e.get('assignment')}: {'; '.join(map(str, e.get('concerns') or []))}",
    "review.skipped": lambda e: f"no review of {e.get('assignment')}: {e.get('reason')}",
    "daemon.started": lambda e: f"pid {e.get('pid')} version {e.get('version')} last seq {e.get('last_seq', 0)}",
    "daemon.stopping": lambda e: "stopping" + (f": {e['reason']}" if e.get("reason") else ""),
    "notify.sent": lambda e: f"notified {e.get('situation')} by {e.get('channel')} (key {e.get('key')})"
                             + (f" after {e['attempts']} attempts" if (e.get("attempts") or 1) > 1 else ""),
    "notify.failed": lambda e: f"could not notify {e.get('situation')} by {e.get('channel')} "
                               f"after {e.get('attempts', 1)} attempt(s): {e.get('error')}",
    "session.question": lambda e: f"question ({e.get('source')}): {e.get('question')}",
    "session.answered": lambda e: f"answered: {e.get('text')}",
    "daemon.reloaded": lambda e: "config reloaded: applied " + (", ".join(map(str, e.get("applied") or [])) or "nothing")
                                 + (f"; needs a restart: {', '.join(map(str, e['needs_restart']))}"
                                    if e.get("needs_restart") else ""),
    "daemon.reload_failed": lambda e: f"config reload failed, old config kept: {e.get('error')}",
    "recovery.detected": lambda e: f"detected {e.get('code')}: {e.get('message')}",
    "recovery.action": _recovery_action,
}


def _fallback(ev: dict) -> str:
    """A kind this client does not know: its own fields, compactly."""
    fields = [f"{k}={short(v, 40)}" for k, v in ev.items() if k not in STAMP_FIELDS]
    return " ".join(fields) or "(no fields)"


def summary(ev: dict, rehearsal: bool = False) -> str:
    """One escaped line (at most ``SUMMARY_MAX`` characters, never empty) saying what ``ev`` is about.

    ``rehearsal``: the event is a rehearsal session's, so a cost it carries is not money spent.
    """
    kind = ev.get("kind", "")
    fn = _SUMMARIES.get(kind, _fallback)
    try:
        text = clean(_usage(ev, rehearsal) if kind == "agent.usage" else fn(ev))
    except (TypeError, ValueError, AttributeError, KeyError):  # a field of an unexpected type
        text = clean(_fallback(ev))
    text = text.strip() or "(empty)"
    return text if len(text) <= SUMMARY_MAX else text[:SUMMARY_MAX - 1] + "…"


def _col(value: object, width: int) -> str:
    text = clean("-" if value in (None, "") else value)
    if len(text) > width:
        text = text[:width - 1] + "…"
    return f"{text:<{width}}"


def _clock(ts: object) -> str:
    """``HH:MM:SS`` of a stamp's ``ts`` (local time); dashes when it is not one."""
    if not isinstance(ts, (int, float)):
        return "--:--:--"
    try:
        return time.strftime("%H:%M:%S", time.localtime(ts))
    except (ValueError, OverflowError, OSError):  # NaN, or out of the platform's range
        return "--:--:--"


def event_line(ev: dict, rehearsal: bool = False) -> str:
    """``seq ts kind session worker agent gen summary``, one line, control characters escaped.

    A missing column is ``-``, so the line always splits into eight fields
    on whitespace (names with spaces aside).
    """
    gen = ev.get("gen") if ev.get("worker") else None  # a generation is a worker's
    return (f"{clean(ev.get('seq', '-')):>7} {_clock(ev.get('ts'))} {_col(ev.get('kind', '?'), 22)} {_col(ev.get('session'), 11)} "
            f"{_col(ev.get('worker'), 12)} {_col(ev.get('agent'), 8)} {_col('' if gen is None else f'g{gen}', 3)} "
            f"{summary(ev, rehearsal)}")
