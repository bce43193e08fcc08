"""Prometheus metrics of the daemon (served on 127.0.0.1:``metrics_port`` when it is set).

Theory of operation
-------------------
Most metrics are derived in ONE place, from events the journal has just
committed: the journal counts each batch's events by kind (a dict update per
event, nothing more) and hands ``observe_batch`` the counts plus the few
events whose fields matter (``METRIC_KINDS``: usage, failures, launches,
exits, reviews, decisions, notifications).  Those are decoded here with a
lenient struct, so a kind that gains or loses a field never breaks the
journal.  Everything an actor does not see as an event (control requests,
bad messages, commit time, pipeline latency) is counted where it happens.

Label values are bounded: agents, request kinds and session/worker states
come from closed sets; free-form values (a failure code, a verdict, a
notify channel) must look like an identifier and only the first
``MAX_VALUES`` distinct ones get their own series, the rest are ``other``.
No session id, path or text ever becomes a label.

``agent.usage`` carries a run's totals so far, so the token and cost
counters add the difference to the previous totals of the same run (kept
until the run's ``worker.exited``, at most ``RUNS_REMEMBERED`` runs).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Callable

import msgspec


def _prometheus_core() -> None:
    """Make ``prometheus_client``'s metric modules importable without running its package ``__init__``.

    That ``__init__`` imports ``prometheus_client.exposition``, which imports
    ``ssl``, ``urllib.request``, ``http.server`` and ``wsgiref``: OpenSSL
    alone is ~4.5 MB of RSS, for HTTP serving a daemon at rest does not do.
    So the package module is created from its spec but not executed; the
    submodules ``registry``, ``metrics`` and ``process_collector`` import as
    usual (an attribute that names a submodule imports just that), and the
    first access to any other package-level name (``from
    prometheus_client import generate_latest``, here in ``exposition()`` or
    anywhere else) runs the real ``__init__`` in that same module object,
    which then finds those submodules already loaded.  A process that had
    imported ``prometheus_client`` before us is left as it is.
    """
    if "prometheus_client" in sys.modules:
        return
    spec = importlib.util.find_spec("prometheus_client")
    pkg = importlib.util.module_from_spec(spec)

    def complete(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        try:  # ``from . import values`` inside the package asks for a submodule: just that
            return importlib.import_module(f"prometheus_client.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"prometheus_client.{name}":
                raise
        del pkg.__getattr__
        spec.loader.exec_module(pkg)
        return getattr(pkg, name)
    pkg.__getattr__ = complete
    sys.modules["prometheus_client"] = pkg


_prometheus_core()
from prometheus_client.metrics import Counter, Gauge, Histogram  # noqa: E402 (after _prometheus_core)
from prometheus_client.process_collector import ProcessCollector  # noqa: E402
from prometheus_client.registry import CollectorRegistry  # noqa: E402

REGISTRY = CollectorRegistry(auto_describe=True)

# ---------------------------------------------------------------- the metrics (names are a contract)

bad_requests = Counter("orchd_bad_requests_total", "Control messages rejected as invalid", ["code"], registry=REGISTRY)
requests = Counter("orchd_requests_total", "Control requests served", ["kind"], registry=REGISTRY)
events = Counter("orchd_events_total", "Events appended to the log and published, by kind", ["kind"],
                 registry=REGISTRY)
bad_lines = Counter("orchd_agent_bad_lines_total", "Agent output lines that were too long, not UTF-8 or had NULs", ["problem"], registry=REGISTRY)
workers_running = Gauge("orchd_workers_running", "Agent processes running now", registry=REGISTRY)
sessions = Gauge("orchd_sessions", "Sessions by state", ["state"], registry=REGISTRY)
actor_restarts = Counter("orchd_actor_restarts_total", "Actors restarted by their supervisor", ["actor"], registry=REGISTRY)
last_seq = Gauge("orchd_last_seq", "Sequence number of the last event logged", registry=REGISTRY)
follower_sessions = Gauge("orchd_follower_sessions", "Sessions the review and recovery actors hold in memory "
                          "(the live ones: an ended session is forgotten)", ["actor"], registry=REGISTRY)
log_writable = Gauge("orchd_log_writable", "1 while the event log can be written, 0 while appends fail "
                     "(the journal keeps the events and retries)", registry=REGISTRY)
log_write_failures = Counter("orchd_log_write_failures_total", "Failed attempts to append to the event log",
                             registry=REGISTRY)
events_not_published = Counter("orchd_events_not_published_total", "Events logged but not sent on the events "
                               "PUB because their frame is over pub_inline_max_bytes (subscribers Replay them)",
                               registry=REGISTRY)
log_writable.set(1)
http_refused = Counter("orchd_http_refused_total", "HTTP requests refused by the bridge "
                       "(no_token, bad_token, cross_origin, bad_host)", ["reason"], registry=REGISTRY)
http_sse_clients = Gauge("orchd_http_sse_clients", "Server-Sent Events clients connected to the bridge",
                         registry=REGISTRY)
http_events_sub = Gauge("orchd_http_events_subscribed", "1 while the bridge's events SUB is open "
                        "(from its first SSE client until shortly after its last)", registry=REGISTRY)
http_sse_dropped = Counter("orchd_http_sse_dropped_total", "SSE clients dropped because their queue was full "
                           "(a slow or frozen browser; it resumes from Last-Event-ID)", registry=REGISTRY)
auth_refused = Counter("orchd_auth_refused_total", "CURVE clients refused by the ZAP handler "
                       "(unknown, revoked, store_unreadable), or whose handshake failed before it "
                       "(handshake: a plaintext ZeroMQ peer, a protocol error)", ["reason"], registry=REGISTRY)

workers = Gauge("orchd_workers", "Workers (assignment runs) by agent and state", ["agent", "state"],
                registry=REGISTRY)
waiting_for_answer = Gauge("orchd_sessions_waiting_for_answer", "Sessions waiting for a user's answer",
                           registry=REGISTRY)
agent_tokens = Counter("orchd_agent_tokens_total", "Tokens reported by agents", ["agent", "direction"],
                       registry=REGISTRY)
agent_cost = Counter("orchd_agent_cost_usd_total", "Cost in USD reported by agents", ["agent"], registry=REGISTRY)
reviews = Counter("orchd_reviews_total", "Review verdicts", ["verdict"], registry=REGISTRY)
decisions = Counter("orchd_decisions_total", "Decisions made about sessions", ["decision"], registry=REGISTRY)
recoveries = Counter("orchd_recoveries_total", "Recognised agent failures, by what was done about them",
                     ["agent", "code", "action"], registry=REGISTRY)
relaunches = Counter("orchd_relaunches_total", "Assignment runs relaunched (a recovered failure, a daemon restart)",
                     ["agent"], registry=REGISTRY)
recovery_detected = Counter("orchd_recovery_detected_total", "Failed assignment runs the recovery actor read, "
                            "by agent and code", ["agent", "code"], registry=REGISTRY)
recovery_actions = Counter("orchd_recovery_actions_total", "What the recovery actor did about failed runs "
                           "(relaunch, park, resume_after_quota, escalate, fail)", ["action"], registry=REGISTRY)
RECOVERY_ACTIONS = frozenset({"relaunch", "park", "resume_after_quota", "escalate", "fail"})
limits_hit = Counter("orchd_limits_total", "Limits reached by workers", ["limit"], registry=REGISTRY)
escalations = Counter("orchd_escalations_total", "Sessions that ended escalated", registry=REGISTRY)
bad_messages = Counter("orchd_bad_messages_total", "Messages refused by a socket: control requests and actor "
                       "inbox messages that could not be decoded", ["socket", "code"], registry=REGISTRY)
notifications = Counter("orchd_notifications_total", "Notifications sent or failed", ["channel", "outcome"],
                        registry=REGISTRY)
reloads = Counter("orchd_config_reloads_total", "Config reloads (SIGHUP)", ["outcome"], registry=REGISTRY)
pipeline_seconds = Histogram(
    "orchd_event_pipeline_seconds", "From an agent's output chunk read by its worker to its events published",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
    registry=REGISTRY)
control_seconds = Histogram(
    "orchd_control_request_seconds", "From a control request received to its reply sent", ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0), registry=REGISTRY)
commit_seconds = Histogram(
    "orchd_journal_commit_seconds", "One append + commit of a batch of events to the event log",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0), registry=REGISTRY)
log_bytes = Gauge("orchd_event_log_bytes", "Size of the event log on disk (database and WAL)", registry=REGISTRY)
ready = Gauge("orchd_ready", "1 once every actor reported ready", registry=REGISTRY)
ProcessCollector(registry=REGISTRY)

# ---------------------------------------------------------------- bounded label values

AGENTS = ("claude", "codex", "gemini", "command")
SESSION_STATES = ("queued", "running", "paused", "done", "failed", "stopped", "escalated")
WORKER_STATES = ("pending", "running", "paused", "done", "failed", "stopped")
REQUEST_KINDS = ("ping", "submit", "status", "pause", "resume", "stop", "review", "answer", "reviews", "clean", "replay",
                 "sync", "inject_fault")
MAX_VALUES = 32
_IDENT = re.compile(r"[a-z][a-z0-9_.-]{0,39}\Z")
_seen: dict[str, set[str]] = {}


def agent_label(agent: object) -> str:
    return agent if agent in AGENTS else "other"


def bounded(metric: str, value: object) -> str:
    """``value`` as a label of ``metric`` if it looks like an identifier and is one of the
    first ``MAX_VALUES`` seen for that metric; else ``other``."""
    if not isinstance(value, str) or not _IDENT.match(value):
        return "other"
    seen = _seen.setdefault(metric, set())
    if value in seen:
        return value
    if len(seen) >= MAX_VALUES:
        return "other"
    seen.add(value)
    return value


def _init_series() -> None:
    """Every series of a closed label set exists from the start (at 0), so rates and alerts see it."""
    for a in AGENTS:
        for d in ("input", "output"):
            agent_tokens.labels(a, d)
        agent_cost.labels(a)
        for st in WORKER_STATES:
            workers.labels(a, st)
    for st in SESSION_STATES:
        sessions.labels(st)
    for k in REQUEST_KINDS:
        control_seconds.labels(k)
    for actor in ("journal", "supervisor"):
        actor_restarts.labels(actor)


_init_series()

# ---------------------------------------------------------------- from committed events

METRIC_KINDS = frozenset({b"agent.usage", b"worker.failure", b"worker.launching", b"worker.exited",
                          b"worker.limit", b"session.state", b"review.verdict", b"decision.made",
                          b"notify.sent", b"notify.failed", b"recovery.detected", b"recovery.action"})
"""Kinds whose fields the metrics need: the journal passes their JSON to ``observe_batch``."""


class _Fields(msgspec.Struct):
    """The fields of any event the metrics read; all optional, unknown ones ignored."""

    kind: str = ""
    session: str | None = None
    worker: str | None = None
    agent: str | None = None
    gen: int = 0
    input_tokens: int | float | None = None
    output_tokens: int | float | None = None
    cost_usd: float | None = None
    code: str | None = None
    action: str | None = None
    resume: bool | None = None
    reason: str | None = None
    state: str | None = None
    limit: str | None = None
    verdict: str | None = None
    decision: str | None = None
    channel: str | None = None


_fields = msgspec.json.Decoder(_Fields)
RUNS_REMEMBERED = 10_000
_usage: dict[tuple, tuple[float, float, float]] = {}  # run -> (input, output, cost) totals so far


_events_of: dict[bytes, object] = {}  # kind -> its ``events`` child (``labels`` costs a lock and a lookup)


def observe_batch(kinds: dict[bytes, int], details: list[bytes]) -> None:
    """Count one committed batch: ``kinds`` maps kind -> events; ``details`` are the JSON of
    the events whose kind is in ``METRIC_KINDS``."""
    for kind, n in kinds.items():
        child = _events_of.get(kind)
        if child is None:
            if len(_events_of) >= 1000:  # kinds are a closed set; bound it anyway
                _events_of.clear()
            child = _events_of[kind] = events.labels(kind.decode())
        child.inc(n)
    for js in details:
        try:
            ev = _fields.decode(js)
        except (msgspec.DecodeError, UnicodeDecodeError):
            continue  # a kind whose fields changed type: not countable, never fatal
        _observe(ev)


def _observe(ev: _Fields) -> None:
    agent = agent_label(ev.agent)
    match ev.kind:
        case "agent.usage":
            run = (ev.session, ev.worker, ev.gen)
            before = _usage.pop(run, (0.0, 0.0, 0.0))
            now = (_num(ev.input_tokens, before[0]), _num(ev.output_tokens, before[1]),
                   _num(ev.cost_usd, before[2]))
            _usage[run] = now
            while len(_usage) > RUNS_REMEMBERED:
                del _usage[next(iter(_usage))]
            for i, direction in enumerate(("input", "output")):
                if now[i] > before[i]:
                    agent_tokens.labels(agent, direction).inc(now[i] - before[i])
            if now[2] > before[2]:
                agent_cost.labels(agent).inc(now[2] - before[2])
        case "worker.exited":
            _usage.pop((ev.session, ev.worker, ev.gen), None)
        case "worker.failure":
            action = ev.action if ev.action in ("relaunch", "escalate") else "other"
            recoveries.labels(agent, bounded("code", ev.code), action).inc()
        case "recovery.detected":
            recovery_detected.labels(agent, bounded("code", ev.code)).inc()
        case "recovery.action":
            recovery_actions.labels(ev.action if ev.action in RECOVERY_ACTIONS else "other").inc()
        case "worker.launching" if ev.gen > 0:
            relaunches.labels(agent).inc()
        case "worker.limit":
            limits_hit.labels(bounded("limit", ev.limit)).inc()
        case "session.state" if ev.state == "escalated":
            escalations.inc()
        case "review.verdict":
            reviews.labels(bounded("verdict", ev.verdict)).inc()
        case "decision.made":
            decisions.labels(bounded("decision", ev.decision)).inc()
        case "notify.sent" | "notify.failed":
            notifications.labels(bounded("channel", ev.channel), ev.kind[len("notify."):]).inc()


def _num(value: object, before: float) -> float:
    return float(value) if isinstance(value, (int, float)) and value == value and value >= 0 else before


# ---------------------------------------------------------------- state gauges

def set_state(session_counts: dict[str, int], worker_counts: dict[str, int], waiting: int) -> None:
    """The session supervisor's summary of its projection (``protocol.ProbeAnswer``);
    ``worker_counts`` is keyed ``"<agent>/<state>"``."""
    for st in SESSION_STATES:
        sessions.labels(st).set(session_counts.get(st, 0))
    totals: dict[tuple[str, str], int] = {}
    for name, n in worker_counts.items():
        agent, _, st = name.partition("/")
        key = (agent_label(agent), st if st in WORKER_STATES else "other")
        totals[key] = totals.get(key, 0) + n
    for a in AGENTS + ("other",):
        for st in WORKER_STATES:
            if (a, st) in totals or a != "other":
                workers.labels(a, st).set(totals.get((a, st), 0))
    waiting_for_answer.set(waiting)


def watch_log_size(path: os.PathLike | str) -> None:
    """``orchd_event_log_bytes`` reads the log's files when scraped (stat only; thread-safe)."""
    files = [str(path), f"{path}-wal"]

    def size() -> float:
        total = 0
        for f in files:
            try:
                total += os.stat(f).st_size
            except OSError:
                continue  # no WAL right after a checkpoint
        return float(total)

    log_bytes.set_function(size)


def exposition():
    """``prometheus_client.exposition`` (``generate_latest``, ``CONTENT_TYPE_LATEST``), loaded on first use."""
    import prometheus_client.exposition
    return prometheus_client.exposition


def start_http(port: int, addr: str = "127.0.0.1") -> Callable[[], None]:
    """Serve ``/metrics``; returns a function that stops the server."""
    from prometheus_client import start_http_server
    server, thread = start_http_server(port, addr=addr, registry=REGISTRY)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(2)
    return stop
