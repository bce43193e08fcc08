"""The ZAP handler: which CURVE clients may connect to the daemon's tcp endpoints.

pyzmq's ``AsyncioAuthenticator`` answers libzmq's ZAP requests (the socket
``inproc://zeromq.zap.01`` of the daemon's context); this module gives it a
credentials provider fed from the authorized-clients store
(``orchd.keys.ClientStore``, read again whenever the file changes, so
``orchd keys revoke`` applies to the next handshake without a restart).

Only sockets bound with ``orchd.bus.curve_server`` ask ZAP (their
``zap_domain`` is ``DOMAIN``); the ipc endpoints, bound before CURVE is
switched on, never do.  A refused key gives one warning line naming its
fingerprint and why (``unknown``, ``revoked``, or ``store_unreadable``)
and counts ``orchd_auth_refused_total{reason}``.

Decide-only logic is ``decide``: a pure function of the store's entries.
"""

from __future__ import annotations

import logging

import zmq
import zmq.asyncio

from orchd import keys, log, metrics

_log = log.get("orchd.zap")

DOMAIN = "orchd"


def decide(entry: keys.AuthorizedClient | None) -> tuple[bool, str]:
    """Allow an authorized, unrevoked key; else refuse, saying why."""
    if entry is None:
        return False, "unknown"
    if entry.revoked_ts is not None:
        return False, "revoked"
    return True, "ok"


class _Provider:
    """pyzmq's credentials-provider interface: ``callback(domain, z85_key) -> bool``."""

    def __init__(self, store: keys.ClientStore) -> None:
        self.store = store

    def callback(self, domain: str, key: bytes) -> bool:
        fp = keys.fingerprint(key)
        try:
            entry = self.store.lookup(key)
        except (OSError, keys.KeyFileError) as exc:
            # refuse, never raise: an exception would end the authenticator's task and stall every handshake
            metrics.auth_refused.labels("store_unreadable").inc()
            _log.error("auth_refused", fingerprint=fp, reason="store_unreadable", error=str(exc)[:300])
            return False
        allowed, reason = decide(entry)
        if allowed:
            _log.info("auth_allowed", client=entry.name, fingerprint=fp)
        else:
            metrics.auth_refused.labels(reason).inc()
            _log.warning("auth_refused", fingerprint=fp, reason=reason,
                         client=entry.name if entry is not None else "-")
        return allowed


class Zap:
    """The daemon's ZAP handler; ``start()`` inside the running loop, before any CURVE socket binds."""

    def __init__(self, ctx: zmq.asyncio.Context, state_dir) -> None:
        from zmq.auth.asyncio import AsyncioAuthenticator
        self.store = keys.ClientStore(state_dir)
        self._auth = AsyncioAuthenticator(ctx, log=logging.getLogger("orchd.zap.pyzmq"))

    def start(self) -> None:
        self._auth.start()
        self._auth.configure_curve_callback(DOMAIN, credentials_provider=_Provider(self.store))

    def stop(self) -> None:
        self._auth.stop()
