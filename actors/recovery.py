"""Recovery policy: what to do when an agent run failed (pure, no I/O).

The adapters' error catalogues name a failure and say whether a relaunch
can fix it (``Failure.action``/``fix``, carried by ``worker.failure``).
This module turns that into a decision, bounded by ``max_relaunches`` per
assignment so nothing loops:

* transient failures (rate limit, network, resume target gone, a flag the
  CLI refused as root...) → relaunch, with the fix's environment, after
  its backoff (capped by ``backoff_cap_s``), resuming the agent's own
  session when it has one and the fix does not say to start fresh;
* an agent CLI that crashed without a known cause → relaunch with resume
  (a ``command`` program is never relaunched: it may not be idempotent);
* everything else (not logged in, invalid key, bad flag, max turns,
  sandbox unavailable, limits) → no relaunch: the session escalates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchd import protocol as p


@dataclass(frozen=True)
class Relaunch:
    reason: str
    resume: bool
    delay_s: float = 0.0
    env: dict[str, str] = field(default_factory=dict)


def decide(failure: p.WorkerFailure | None, agent: str, relaunches: int, max_relaunches: int,
           has_session: bool, backoff_cap_s: float) -> Relaunch | None:
    """A relaunch for this failed run, or None (leave it failed)."""
    if failure is None or failure.action != "relaunch" or relaunches >= max_relaunches:
        return None
    if agent == "command":
        return None
    fix = failure.the_fix() or p.Fix()
    delay = min(fix.backoff_s, backoff_cap_s)
    return Relaunch(reason=f"{failure.code}: {failure.message}"[:300], resume=has_session and not fix.fresh,
                    delay_s=max(delay, 0.0), env=dict(fix.env))
