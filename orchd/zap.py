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
and counts ``orchd_auth_refused_total{reason}``.  A refused client that keeps
reconnecting (libzmq retries every 100 ms) is counted every time but logged
at most once per ``LOG_EVERY_S`` per key, with how many refusals the line
stands for.  A connection whose handshake fails before ZAP is asked (a
plaintext ZeroMQ peer knocking on a CURVE port, or any other handshake
libzmq reports as failed: a protocol error, a connection dropped
mid-handshake), and a tcp connection that ends without speaking ZeroMQ at
all (an HTTP request, a port scan: ``orchd.handshakes``), is counted as ``handshake`` (socket monitors,
``bus.failed_handshakes``, read every ``REVOKE_CHECK_S``) and logged the
same way, as one ``handshake_refused`` line per ``LOG_EVERY_S``.

A revocation also ends the connections the key already has: ``Zap`` looks
at the store every ``REVOKE_CHECK_S``; when a key it has let in is not
active any more, every CURVE endpoint is unbound and bound again
(``bus.drop_curve_clients``).  Authorized clients reconnect by themselves
(``watch`` reads any events it missed from the log); the revoked one meets
ZAP again and is refused.

Decide-only logic is ``decide`` and ``newly_revoked``: pure functions of the
store's entries.
"""

from __future__ import annotations

import asyncio
import logging
import time

import zmq
import zmq.asyncio

from orchd import bus, keys, log, metrics

_log = log.get("orchd.zap")

DOMAIN = "orchd"
REVOKE_CHECK_S = 0.5
LOG_EVERY_S = 60.0
LOG_KEYS_MAX = 1000  # keys remembered for the log's rate limit


def decide(entry: keys.AuthorizedClient | None) -> tuple[bool, str]:
    """Allow an authorized, unrevoked key; else refuse, saying why."""
    if entry is None:
        return False, "unknown"
    if entry.revoked_ts is not None:
        return False, "revoked"
    return True, "ok"


def active_keys(clients: list[keys.AuthorizedClient]) -> frozenset[str]:
    return frozenset(c.public_key for c in clients if c.revoked_ts is None)


def newly_revoked(let_in: frozenset[str], active: frozenset[str]) -> frozenset[str]:
    """Keys that were let in and are not active now (revoked or removed from the store)."""
    return let_in - active


class _Provider:
    """pyzmq's credentials-provider interface: ``callback(domain, z85_key) -> bool``."""

    def __init__(self, store: keys.ClientStore) -> None:
        self.store = store
        self._logged: dict[str, tuple[float, int]] = {}  # fingerprint -> (monotonic time logged, refusals since)
        self.let_in: set[str] = set()  # Z85 keys allowed since the last drop: who may hold a connection

    def _should_log(self, fp: str, n: int = 1) -> int:
        """How many refusals of ``fp`` (``n`` more now) a line logged now stands for (0: do not
        log yet)."""
        now = time.monotonic()
        last, count = self._logged.get(fp, (None, 0))
        if last is not None and now - last < LOG_EVERY_S:
            self._logged[fp] = (last, count + n)
            return 0
        if len(self._logged) >= LOG_KEYS_MAX:
            self._logged.clear()
        self._logged[fp] = (now, 0)
        return count + n

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
            self.let_in.add(entry.public_key)
            _log.info("auth_allowed", client=entry.name, fingerprint=fp)
        else:
            metrics.auth_refused.labels(reason).inc()
            if refusals := self._should_log(fp):
                _log.warning("auth_refused", fingerprint=fp, reason=reason,
                             client=entry.name if entry is not None else "-", refusals=refusals)
        return allowed


class Zap:
    """The daemon's ZAP handler; ``start()`` inside the running loop, before any CURVE socket binds."""

    def __init__(self, ctx: zmq.asyncio.Context, state_dir) -> None:
        from zmq.auth.asyncio import AsyncioAuthenticator
        self.store = keys.ClientStore(state_dir)
        self._auth = AsyncioAuthenticator(ctx, log=logging.getLogger("orchd.zap.pyzmq"))

    def start(self) -> None:
        self._auth.start()
        self._provider = _Provider(self.store)
        self._auth.configure_curve_callback(DOMAIN, credentials_provider=self._provider)
        self._watcher = asyncio.ensure_future(self._watch())

    def stop(self) -> None:
        self._watcher.cancel()
        self._auth.stop()

    def _count_failed_handshakes(self) -> None:
        """Connections whose handshake failed before ZAP (``bus.failed_handshakes``): counted as
        ``handshake``, logged at most once per ``LOG_EVERY_S`` with how many there were since the
        last line."""
        failed = bus.failed_handshakes()
        if not failed:
            return
        metrics.auth_refused.labels("handshake").inc(failed)
        if refusals := self._provider._should_log("handshake", failed):  # no fingerprint is that word
            _log.warning("handshake_refused", refusals=refusals,
                         why="a peer that does not speak CURVE (plaintext ZeroMQ, or no ZeroMQ at all), "
                             "or a broken handshake")

    def _active(self) -> frozenset[str] | None:
        try:
            return active_keys(self.store.clients())
        except (OSError, keys.KeyFileError):
            return None  # unreadable: every handshake is refused meanwhile (and logged there)

    async def _watch(self) -> None:
        """Every ``REVOKE_CHECK_S``: count failed handshakes, drop the connections of revoked keys."""
        while True:
            await asyncio.sleep(REVOKE_CHECK_S)
            self._count_failed_handshakes()
            now = self._active()
            if now is None:
                continue
            gone = newly_revoked(frozenset(self._provider.let_in), now)
            self._provider.let_in -= gone
            if gone:
                try:
                    endpoints = bus.drop_curve_clients()
                except zmq.ZMQError as exc:
                    _log.error("curve_rebind_failed", error=str(exc),
                               hint="the remote endpoints are down until orchd restarts")
                    continue
                _log.info("curve_clients_dropped", revoked=",".join(sorted(keys.fingerprint(k) for k in gone)),
                          endpoints=endpoints, why="a revoked key loses the connections it has")
