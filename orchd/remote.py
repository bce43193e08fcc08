"""The daemon's remote (CURVE over tcp) endpoints, from the config: what the public sockets bind.

``remote_control_endpoint`` / ``remote_events_endpoint`` are bound on the
same ROUTER and PUB as the ipc endpoints, after them, with CURVE
(``orchd.bus.bind_curve``); the server key pair is read from the state dir
each time a socket is made (``orchd keys init`` creates it), and
``orchd.zap`` decides which clients get in.
"""

from __future__ import annotations

from typing import Any

from orchd import keys


def enabled(cfg) -> bool:
    return cfg.remote_control_endpoint is not None or cfg.remote_events_endpoint is not None


def server_keys(cfg) -> keys.ServerKeys | None:
    """The server pair when remote endpoints are configured (``KeyFileError`` if it is missing)."""
    return keys.load_server_keys(cfg.state_dir) if enabled(cfg) else None


def control_binding(cfg) -> dict[str, Any]:
    """Keyword arguments of ``bus.control_router`` (and ``ControlSocket``) for the remote control endpoint."""
    if cfg.remote_control_endpoint is None:
        return {}
    return {"curve": server_keys(cfg), "curve_endpoints": [cfg.remote_control_endpoint]}


def events_binding(cfg) -> dict[str, Any]:
    """Keyword arguments of ``bus.events_pub`` (and ``JournalSockets``) for the remote events endpoint."""
    if cfg.remote_events_endpoint is None:
        return {}
    return {"curve": server_keys(cfg), "curve_endpoints": [cfg.remote_events_endpoint]}
