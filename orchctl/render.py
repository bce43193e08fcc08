"""Human-readable output of orchctl (tables); ``--json`` output bypasses this."""

from __future__ import annotations

import time

from orchd import protocol as p


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers)] + [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def session(s: p.SessionInfo) -> str:
    head = f"session {s.id}  {s.state}  {s.progress * 100:.0f}%"
    if s.reason:
        head += f"  ({s.reason})"
    if s.branch:
        head += f"  branch {s.branch}"
    rows = [[w.name, w.agent, w.state, "" if w.exit_code is None else w.exit_code, w.gen,
             f"{w.progress * 100:.0f}%", w.milestones, w.input_tokens + w.output_tokens,
             "" if w.cost_usd is None else f"${w.cost_usd:.4f}", w.reason or ""] for w in s.workers]
    return head + "\n" + table(rows, ["WORKER", "AGENT", "STATE", "EXIT", "GEN", "PROGRESS",
                                      "MILESTONES", "TOKENS", "COST", "REASON"])


def sessions(ss: list[p.SessionInfo]) -> str:
    if not ss:
        return "no sessions"
    rows = [[s.id, s.state, f"{s.progress * 100:.0f}%", len(s.workers),
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.created_ts)), s.task[:40]] for s in ss]
    return table(rows, ["SESSION", "STATE", "PROGRESS", "WORKERS", "CREATED", "TASK"])


_SUMMARY_FIELDS = ("text", "line", "message", "state", "reason", "tool", "problem", "detail", "limit",
                   "exit_code", "raw")


def event_line(ev: dict) -> str:
    ts = time.strftime("%H:%M:%S", time.localtime(ev.get("ts", 0)))
    who = ev.get("worker") or ""
    parts = []
    for key in _SUMMARY_FIELDS:
        if ev.get(key) not in (None, ""):
            val = str(ev[key]).replace("\n", " ⏎ ")
            parts.append(val if key in ("text", "line", "message") else f"{key}={val}")
    summary = " ".join(parts)
    if len(summary) > 160:
        summary = summary[:157] + "..."
    return f"{ev.get('seq', 0):>7} {ts} {ev.get('session') or '-':<11} {who:<12} {ev.get('kind', '?'):<22} {summary}"
