"""Prometheus metrics of the daemon (served when ``metrics_port`` is set)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

REGISTRY = CollectorRegistry(auto_describe=True)

bad_requests = Counter("orchd_bad_requests_total", "Control messages rejected as invalid", ["code"], registry=REGISTRY)
requests = Counter("orchd_requests_total", "Control requests served", ["kind"], registry=REGISTRY)
events = Counter("orchd_events_total", "Events appended to the log and published", registry=REGISTRY)
bad_lines = Counter("orchd_agent_bad_lines_total", "Agent output lines that were too long, not UTF-8 or had NULs", ["problem"], registry=REGISTRY)
workers_running = Gauge("orchd_workers_running", "Agent processes running now", registry=REGISTRY)
sessions = Gauge("orchd_sessions", "Sessions by state", ["state"], registry=REGISTRY)
actor_restarts = Counter("orchd_actor_restarts_total", "Actors restarted by their supervisor", ["actor"], registry=REGISTRY)
last_seq = Gauge("orchd_last_seq", "Sequence number of the last event logged", registry=REGISTRY)
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
http_sse_dropped = Counter("orchd_http_sse_dropped_total", "SSE clients dropped because their queue was full "
                           "(a slow or frozen browser; it resumes from Last-Event-ID)", registry=REGISTRY)
