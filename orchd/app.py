"""``orchd``: the daemon's entry point (flags, config, root supervisor, signals).

``orchd run`` starts, in one asyncio process, a root supervisor with two
permanent children: the journal (event log + PUB) and the session
supervisor (control socket, sessions, worker actors).  SIGTERM or SIGINT
stops them in reverse order (workers get TERM, a grace period, then KILL),
flushes the log and exits 0.  A child that crashes too often escalates to
the root, which stops everything and exits 1.  SIGHUP reloads the config
(``orchd.reload``).  Under systemd it speaks sd_notify (``orchd.sdnotify``:
READY, STATUS, WATCHDOG from ``orchd.watchdog``, RELOADING, STOPPING).
"""

from __future__ import annotations

import argparse
import sys


def _import_without_openssl() -> None:
    """Import asyncio and hashlib without OpenSSL, which a daemon at rest never uses.

    OpenSSL (libssl and libcrypto) is ~4.5 MB of RSS, and two standard
    modules load it when imported: asyncio imports ``ssl`` for TLS
    transports (``try: import ssl / except ImportError: ssl = None``), and
    ``hashlib`` (so ``hmac`` and ``secrets``, which pydantic imports) imports
    ``_hashlib``, OpenSSL's hashes.  orchd never does TLS on its event loop
    (ZeroMQ is ipc or CURVE, the dashboard plain HTTP on loopback), and its
    few hashes (key fingerprints, token comparisons) are served as well by
    CPython's built-in SHA-1/SHA-2/SHA-3/MD5/BLAKE2 modules, which hashlib
    falls back to.  So both are imported here while ``ssl`` and ``_hashlib``
    cannot be, then made importable again: code that needs TLS later imports
    ``ssl`` as usual (the notifier does, in its thread, when it POSTs to an
    https webhook).  Nothing runs in other threads yet, so the hidden moment
    cannot break anybody else's import.  An interpreter built without the
    built-in hashes keeps OpenSSL's.
    """
    def hidden(name: str, *imports: str) -> None:
        sys.modules[name] = None  # type: ignore[assignment]  # ``import name`` raises ImportError
        try:
            for module in imports:
                __import__(module)
        finally:
            del sys.modules[name]

    if not {"ssl", "asyncio"} & sys.modules.keys():
        hidden("ssl", "asyncio")
    builtin_hashes = ("_md5", "_sha1", "_sha3", "_blake2",
                      *(("_sha2",) if sys.version_info >= (3, 12) else ("_sha256", "_sha512")))
    if not {"_hashlib", "hashlib", "hmac"} & sys.modules.keys():
        from importlib.util import find_spec
        if all(find_spec(name) is not None for name in builtin_hashes):
            hidden("_hashlib", "hashlib", "hmac")


_import_without_openssl()

import asyncio  # noqa: E402 (after _import_without_openssl)
import fcntl  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import stat  # noqa: E402
from pathlib import Path  # noqa: E402

from orchd import __version__, config, log, redact, wakeups  # noqa: E402

_log = log.get("orchd")


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


def prepare_runtime_dir(path: Path) -> None:
    """Make sure the ipc sockets' directory keeps other users out, changing nothing we did not create.

    A missing directory (and any missing parent) is created 0700.  One that
    exists must be a real directory (not a symlink), ours, and 0700: else
    this refuses with a ``StartupError`` and leaves it as it is (``--runtime-dir
    /tmp`` must not chmod /tmp).
    """
    path = Path(os.path.abspath(path))
    missing = []
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for created in reversed(missing):
        try:
            os.mkdir(created, 0o700)
        except FileExistsError:
            continue  # somebody else made it meanwhile: checked below like any existing dir
        os.chmod(created, 0o700)  # ours: a umask like 0o277 must not lock us out
    fix = "remove it or choose another --runtime-dir (orchd only uses a directory it owns with mode 0700)"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if os.path.islink(path):
            raise StartupError(f"runtime dir {path} is a symlink: {fix}") from None
        raise StartupError(f"runtime dir {path} is not usable ({exc.strerror}): {fix}") from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if st.st_uid != os.getuid():
        raise StartupError(f"runtime dir {path} belongs to uid {st.st_uid}, not to us ({os.getuid()}): {fix}")
    if stat.S_IMODE(st.st_mode) != 0o700:
        raise StartupError(f"runtime dir {path} has mode {stat.S_IMODE(st.st_mode):04o}, not 0700: {fix}")


def prepare_state_dir(path: Path) -> None:
    """Create the state dir (and missing parents) 0700; warn, and change nothing, if an existing one is open.

    The files orchd writes in it are 0600 whatever the directory's mode
    (the umask is 0o077 from the start of ``cmd_run``).
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        _log.warning("state_dir_open", path=str(path), mode=f"{mode:04o}",
                     hint=f"other users can list it; run 'chmod 700 {path}'")


def take_lock(runtime_dir: Path, what: str = "runtime dir"):
    """An exclusive lock on ``<dir>/orchd.lock``; the kernel drops it if we die.

    Taken on the runtime dir (so a stale socket left by a crashed daemon
    does not block a restart) and on the state dir (so two daemons never
    write one event log, whatever their runtime dirs).  The file is opened
    0600 and never through a symlink.
    """
    fd = os.open(runtime_dir / "orchd.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    fh = os.fdopen(fd, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise StartupError(f"another orchd (pid {holder}) is already running with {what} {runtime_dir}") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def _remove_stale_ipc(endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        sock_path = Path(endpoint[len("ipc://"):])
        if sock_path.exists():
            sock_path.unlink()


async def serve(cfg: config.Config, reload_config=None) -> int:
    """Run the daemon until SIGTERM/SIGINT (0) or an escalation (1).

    ``reload_config()`` builds the config again for SIGHUP (None: SIGHUP only
    re-reads nothing and says so).
    """
    import zmq

    from actors.notifier import NotifierPorts
    from actors.rehearsal.sessions import Rehearsals
    from actors.recovery import RECOVERY_FOLLOWS, RecoveryActor
    from actors.review import REVIEW_FOLLOWS, ReviewActor
    from actors.supervisor import Ports, SessionSupervisor
    from orchd import bus, proc, protocol as p, wire
    from orchd.actor import ChildSpec, Mailbox, Outbox, Supervisor
    from orchd.follow import SUPERVISOR_FOLLOWS, Follower
    from orchd import metrics
    from orchd.journal import JournalActor, JournalSockets
    from orchd.notify import FOLLOWS as NOTIFY_FOLLOWS
    from orchd.sdnotify import Notifier
    from orchd.store import EventLog
    from orchd.watchdog import Watchdog

    sd = Notifier()  # sd_notify (READY, STATUS, WATCHDOG); ``notifier`` below is the notification actor
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(name, None)  # read once: the agents must not inherit them

    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    log_path = cfg.state_dir / "events.sqlite3"
    killed = proc.kill_orphans(str(cfg.state_dir))
    if killed:
        _log.warning("orphans_killed", pids=killed)
    last = EventLog(log_path)
    last_seq = last.last_seq()
    last.close()
    for ep in (cfg.control(), cfg.events()):
        _remove_stale_ipc(ep)  # we hold the lock: any socket file is a dead daemon's

    ctx = bus.context()
    rehearsals = Rehearsals(cfg.state_dir)
    root = Supervisor("root", max_restarts=3, period_s=10.0)
    # the journal's mailbox and PUB are bound here, once: producers stay connected across its restarts
    from orchd import remote
    zap = None
    if remote.enabled(cfg) or (cfg.host_link_endpoint or "").startswith("tcp://"):
        from orchd.zap import Zap
        zap = Zap(ctx, cfg.state_dir)  # before any CURVE socket binds: ZAP decides who connects
        zap.start()
    journal = JournalSockets(ctx, JOURNAL, [cfg.events()], pub_hwm=cfg.pub_hwm, pub_queue_bytes=cfg.pub_queue_bytes,
                             pub_inline_max_bytes=cfg.pub_inline_max_bytes, **remote.events_binding(cfg))
    try:
        journal.open()
    except BaseException:
        if zap is not None:
            zap.stop()
        ctx.destroy(linger=0)
        raise
    followers = [Follower(SUPERVISOR, SUPERVISOR_FOLLOWS), Follower(REVIEW, REVIEW_FOLLOWS, log_health=False),
                 Follower(RECOVERY, RECOVERY_FOLLOWS, log_health=False)]
    notifier = NotifierPorts(ctx, cfg, log_path, NOTIFY, JOURNAL, last_seq) if cfg.notify.channels() else None
    if notifier is not None:
        followers.append(Follower(NOTIFY, NOTIFY_FOLLOWS, log_health=False))

    def start_journal(restarts: int):
        return JournalActor(journal, log_path, followers).run(restarts)  # a fresh actor on every (re)start
    # what outlives a restart of the session supervisor: its mailbox, its PUSH to the journal, the workers
    out = Outbox(ctx, hwm=1000, linger_s=cfg.stop_grace_s)

    def worker_ended(name: str, crashed: bool) -> None:
        session, worker, gen = name.split("/")
        try:
            out.send_nowait(SUPERVISOR, wire.pack(p.WorkerEnded(session=session, worker=worker, gen=int(gen),
                                                                crashed=crashed)))
        except zmq.Again:
            _log.error("worker_end_lost", actor=name, reason="the supervisor's mailbox is full")

    workers = Supervisor("workers", max_restarts=10**6, period_s=1.0, on_exit=worker_ended)
    ports = Ports(inbox=Mailbox(ctx, SUPERVISOR), out=out, inbox_ep=SUPERVISOR, journal_ep=JOURNAL, workers=workers,
                  review_ep=REVIEW, recovery_ep=RECOVERY)
    host_link = None
    if cfg.host_link_endpoint:  # agent hosts (orchd host) may connect: see actors/hostlink.py
        from actors.hostlink import HostLink
        host_link = ports.hosts = HostLink(ctx, cfg, link_server_keys(cfg))
    # the review actor's mailbox and PUSH outlive its restarts too (the journal keeps forwarding to it)
    review_inbox = Mailbox(ctx, REVIEW)
    review_out = Outbox(ctx, hwm=1000, linger_s=cfg.stop_grace_s)

    def start_review(restarts: int):
        return ReviewActor(cfg, log_path, review_inbox, review_out, JOURNAL, SUPERVISOR).run(restarts)
    # the recovery actor's too: a restarted one rebuilds from the log (its decisions and quota waits are there)
    recovery_inbox = Mailbox(ctx, RECOVERY)
    recovery_out = Outbox(ctx, hwm=1000, linger_s=cfg.stop_grace_s)

    def start_recovery(restarts: int):
        return RecoveryActor(cfg, log_path, recovery_inbox, recovery_out, JOURNAL).run(restarts)
    sup_ready = asyncio.Event()

    def start_supervisor(restarts: int):
        # a fresh actor on every (re)start: nothing of a crashed one is reused
        return SessionSupervisor(ctx, cfg, log_path, ports, rehearsals).run(sup_ready)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reload_asked: list[bool] = []  # a SIGHUP before the actors are ready waits for them
    loop.add_signal_handler(signal.SIGHUP, lambda: reload_asked.append(True))
    code = 0
    stop_metrics = None
    watchdog_task = None
    try:
        root.start_child(ChildSpec("journal", start_journal, shutdown_s=5.0))
        root.start_child(ChildSpec("supervisor", start_supervisor, shutdown_s=cfg.stop_grace_s + 10))
        root.start_child(ChildSpec("review", start_review, shutdown_s=5.0))
        root.start_child(ChildSpec("recovery", start_recovery, shutdown_s=5.0))
        if host_link is not None:
            root.start_child(ChildSpec("hostlink", host_link.run, shutdown_s=2.0))
        if notifier is not None:
            root.start_child(ChildSpec("notifier", notifier.start, shutdown_s=2.0))
        metrics.watch_log_size(log_path)
        if cfg.metrics_port:
            stop_metrics = metrics.start_http(cfg.metrics_port)

        async def announce(ev):
            await out.send(JOURNAL, wire.append_one(None, ev, _now()))

        await announce(p.DaemonStarted(pid=os.getpid(), version=__version__, last_seq=last_seq))
        http = _start_http(ctx, cfg)
        esc = asyncio.ensure_future(root.wait_escalation())
        waiter = asyncio.ensure_future(stop.wait())
        ready = asyncio.ensure_future(sup_ready.wait())
        await asyncio.wait({esc, waiter, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            # the supervisor is ready only after a Barrier came back through the journal: both answer
            metrics.ready.set(1)
            sd.ready("started")
            _log.info("orchd_started", pid=os.getpid(), control=cfg.control(), events=cfg.events(),
                      state_dir=str(cfg.state_dir), last_seq=last_seq, sd_notify=sd.enabled,
                      watchdog_s=sd.watchdog_s, remote_control=cfg.remote_control_endpoint or "-",
                      remote_events=cfg.remote_events_endpoint or "-")
            watchdog = Watchdog(ctx, out, sd, JOURNAL, SUPERVISOR,
                                journal_failing=lambda: journal.log_error is not None)
            watchdog_task = asyncio.ensure_future(watchdog.run())
            _trim_heap()

            reloading: set[asyncio.Task] = set()

            def reload_now() -> None:
                task = loop.create_task(_reload(cfg, reload_config, sd, announce, lambda: watchdog.status))
                reloading.add(task)
                task.add_done_callback(reloading.discard)
            loop.add_signal_handler(signal.SIGHUP, reload_now)
            if reload_asked:
                reload_now()
        await asyncio.wait({esc, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if esc.done():
            _log.error("orchd_escalation", error=str(esc.exception()))
            code = 1
        for fut in (esc, waiter, ready):
            fut.cancel()
        sd.stopping("stopping")
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # stopping: a reload no longer matters
        if watchdog_task is not None:
            watchdog_task.cancel()
            await asyncio.wait({watchdog_task})
        await announce(p.DaemonStopping(reason="escalation" if code else "signal"))
        _log.info("orchd_stopping")
        # the supervisor first (no new launches), then the workers (they stop their agents and log
        # how they ended), then the journal, which flushes its inbox
        root.begin_shutdown()
        if http is not None:
            await http.shutdown()
        await root.stop_child("review")
        await root.stop_child("recovery")
        await root.stop_child("supervisor")
        await workers.shutdown(concurrent=True)
        await root.stop_child("notifier")  # deliveries in flight are abandoned
        await journal.flush_and_stop(timeout_s=5.0)
        await root.shutdown()
    finally:
        if stop_metrics is not None:
            stop_metrics()
        journal.close()
        ports.inbox.close()
        review_inbox.close()
        review_out.close()
        recovery_inbox.close()
        recovery_out.close()
        out.close()
        rehearsals.close()
        if notifier is not None:
            notifier.close()
        if zap is not None:
            zap.stop()
        ctx.destroy(linger=0)
        sd.close()
    _log.info("orchd_stopped", code=code)
    return code


def _trim_heap() -> None:
    """Settle the heap once the daemon has started.

    * Collect, then ``gc.freeze()`` what is left: the modules, the config's validators and
      the actors live as long as the daemon, and a full collection walked them all every
      time (a gen-2 collection during a 200-agent start took 33-244 ms, and every agent
      line waited for it).  Frozen objects are still freed by reference counting; only a
      cycle among them would stay.
    * Give the C heap's free pages back to the kernel (glibc's ``malloc_trim``; elsewhere
      nothing): building the config's validators, reading the log and starting the actors
      leave ~1 MB freed but resident, which an idle daemon would keep."""
    import ctypes
    import gc
    gc.collect()
    gc.freeze()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _start_http(ctx, cfg: config.Config):
    """The web dashboard's HTTP bridge (``http_listen``), under its own supervisor.

    It is a client of the public sockets like any other, so it may fail
    without touching the daemon: a port in use is logged (here, at start)
    and the daemon runs on without it; a crash is restarted a few times,
    then it stays down.  The port is bound now, the bridge (aiohttp) is
    imported on the first connection (``orchd.web_listen``).
    """
    from orchd.actor import ChildSpec, Supervisor
    from orchd.supervision import Restart
    from orchd.web_auth import parse_listen
    from orchd.web_listen import LazyBridge
    listen = parse_listen(cfg.http_listen)
    if listen is None:
        return None
    bridge = LazyBridge(ctx, cfg.control(), cfg.events(), cfg.state_dir, cfg.runtime_dir, *listen)
    if not bridge.open():
        return None
    sup = Supervisor("http", max_restarts=3, period_s=60.0)
    sup.start_child(ChildSpec("http", bridge.run, restart=Restart.TRANSIENT, shutdown_s=3.0))
    return sup


async def _reload(cfg: config.Config, reload_config, notifier, announce, status) -> None:
    """SIGHUP: read the config again, apply what can change live, say what needs a restart.

    A config that cannot be used changes nothing: one log line, a
    ``daemon.reload_failed`` event, and the daemon goes on with the old one.
    """
    from orchd import metrics, reload
    from orchd import protocol as p
    notifier.reloading()
    try:
        try:
            if reload_config is None:
                raise ValueError("this daemon was not started from a config it can read again")
            new = reload_config()
        except (OSError, ValueError) as exc:
            metrics.reloads.labels("failed").inc()
            _log.error("config_reload_failed", error=str(exc)[:500], kept="the running config")
            await announce(p.DaemonReloadFailed(error=str(exc)[:2000]))
            return
        applied, restart = reload.diff(cfg, new)
        reload.apply(cfg, new, applied)
        if "log_level" in applied or "log_format" in applied:
            log.setup(cfg.log_level, cfg.log_format)
        metrics.reloads.labels("ok").inc()
        _log.info("config_reloaded", applied=",".join(applied) or "-", needs_restart=",".join(restart) or "-")
        await announce(p.DaemonReloaded(applied=applied, needs_restart=restart))
    finally:
        notifier.ready(status() or "reloaded")


JOURNAL = "inproc://journal"
SUPERVISOR = "inproc://supervisor"
REVIEW = "inproc://review"
RECOVERY = "inproc://recovery"
NOTIFY = "inproc://notify"


def _now() -> float:
    import time
    return time.time()


def cmd_run(args) -> int:
    """Start the daemon: exit 2 for a bad configuration, 1 if it cannot start, else ``serve``'s code.

    The umask is 0o077 before anything is created, so every directory and
    file the daemon makes (state dir, event log with its -wal and -shm,
    locks, ipc sockets) is owner-only.
    """
    old_umask = os.umask(0o077)
    from orchd import proc
    proc.AGENT_UMASK = old_umask  # agents write the user's files with the user's umask
    try:
        return _run(args)
    finally:
        os.umask(old_umask)


def _run(args) -> int:
    flags = {"state_dir": args.state_dir, "runtime_dir": args.runtime_dir}
    if getattr(args, "http", None) is not None:
        flags["http_listen"] = args.http
    try:
        cfg = config.load(args.config, flags)
    except (OSError, ValueError) as exc:
        print(f"orchd: bad configuration: {exc}", file=sys.stderr)
        return 2
    redact.configure(os.environ)  # before anything is logged: the credentials in our environment
    log.setup(cfg.log_level, cfg.log_format)
    try:
        prepare_runtime_dir(cfg.runtime_dir)
        lock = take_lock(cfg.runtime_dir)
    except (StartupError, OSError) as exc:
        print(f"orchd: {exc}", file=sys.stderr)
        return 1
    try:
        prepare_state_dir(cfg.state_dir)
        state_lock = take_lock(cfg.state_dir, "state dir")
        _check_remote(cfg)
    except (StartupError, OSError) as exc:
        lock.close()
        print(f"orchd: {exc}", file=sys.stderr)
        return 1
    def reload_config() -> config.Config:
        return config.load(args.config, flags)

    try:
        return wakeups.run(serve(cfg, reload_config), cfg.wake_coalesce_us)
    finally:
        state_lock.close()
        lock.close()


def _check_remote(cfg: config.Config) -> None:
    """Remote endpoints need the server key pair: say so at start, not at the first bind."""
    from orchd import keys, remote
    try:
        remote.server_keys(cfg)
        link_server_keys(cfg)
    except keys.KeyFileError as exc:
        raise StartupError(f"remote endpoints are configured but the CURVE keys are not usable: {exc} "
                           f"(create them with 'orchd keys init --state-dir {cfg.state_dir}')") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="orchd", description="Run AI coding-agent CLIs together on one task.")
    ap.add_argument("--version", action="version", version=f"orchd {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", type=Path, help="TOML config file")
    run.add_argument("--state-dir", type=Path, help="where the event log and worktrees live")
    run.add_argument("--runtime-dir", type=Path, help="where the ipc sockets live (mode 0700)")
    run.add_argument("--http", metavar="HOST:PORT", help="the web dashboard's address (default 127.0.0.1:7878; "
                     "'off' disables it)")
    run.set_defaults(func=cmd_run)
    webp = sub.add_parser("web", help="run the web dashboard's HTTP bridge alone, as a client of a running daemon")
    webp.add_argument("--config", type=Path, help="TOML config file")
    webp.add_argument("--state-dir", type=Path, help="where the bridge's token is kept (the daemon's state dir)")
    webp.add_argument("--runtime-dir", type=Path, help="the daemon's runtime dir (its sockets)")
    webp.add_argument("--http", metavar="HOST:PORT", help="address to listen on (default: http_listen)")
    webp.add_argument("--endpoint", metavar="tcp://HOST:PORT", help="a remote daemon's control endpoint (CURVE)")
    webp.add_argument("--events-endpoint", metavar="tcp://HOST:PORT",
                      help="the remote daemon's events endpoint (default: the --endpoint port + 1)")
    webp.add_argument("--server-key", metavar="KEY", help="the remote daemon's public key, or a file holding it")
    webp.add_argument("--client-key", metavar="FILE", help="this client's secret key file "
                      "(default: $XDG_CONFIG_HOME/orchctl/client.key_secret)")
    webp.add_argument("--profile", metavar="NAME", help="a remote daemon named in orchctl's config.toml")
    webp.set_defaults(func=cmd_web)
    doctor = sub.add_parser("doctor", help="check the agent CLIs (and rehearse them)")
    doctor.add_argument("--config", type=Path)
    doctor.add_argument("--rehearse", action="store_true", help="run each real CLI against the scripted model server")
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(func=_doctor)
    hostp = sub.add_parser("host", help="run an agent host: offer agent slots to a supervisor on another machine")
    hostp.add_argument("--connect", required=True, metavar="ENDPOINT",
                       help="the supervisor's host_link_endpoint (tcp://HOST:PORT, or ipc:// on one machine)")
    hostp.add_argument("--server-key", metavar="KEY", help="the supervisor's public CURVE key, or its key file "
                       "(needed on tcp; orchd keys show prints it)")
    hostp.add_argument("--client-key", type=Path, metavar="FILE",
                       help="this host's CURVE key pair (default: orchctl keys new's); authorize its public key "
                       "on the supervisor with orchd keys add NAME KEY")
    hostp.add_argument("--slots", type=int, default=1, help="agents this host runs at once (default 1)")
    hostp.add_argument("--name", help="this host's name (default: the machine's hostname)")
    hostp.add_argument("--state-dir", type=Path, help="working copies and run dirs (default: the state dir)")
    hostp.add_argument("--heartbeat-s", type=float, default=1.0, help="heartbeat interval (default 1 s)")
    hostp.add_argument("--grace-s", type=float, default=30.0,
                       help="stop the agents when the supervisor is silent this long (default 30 s)")
    hostp.set_defaults(func=cmd_host)
    check = sub.add_parser("check-config", help="check a TOML config file (alone: no ORCHD_* env): 'ok', exit 0")
    check.add_argument("file", type=Path)
    check.set_defaults(func=_check_config)
    _keys_parser(sub)
    from orchd.keys import argv_with_keys
    args = ap.parse_args(argv_with_keys(sys.argv[1:] if argv is None else list(argv)))
    return args.func(args)


def _keys_parser(sub) -> None:
    keys_p = sub.add_parser("keys", help="CURVE keys for remote clients: init, show, add, list, revoke")
    kc = keys_p.add_subparsers(dest="keys_cmd", required=True)

    def keys_command(name: str, helptext: str):
        parser = kc.add_parser(name, help=helptext)
        parser.add_argument("--config", type=Path, help="TOML config file")
        parser.add_argument("--state-dir", type=Path, help="the daemon's state dir (where the keys live)")
        parser.add_argument("--json", action="store_true")
        parser.set_defaults(func=cmd_keys)
        return parser
    keys_command("init", "create the daemon's key pair (secret key 0600)").add_argument(
        "--force", action="store_true", help="replace an existing pair (every client needs the new public key)")
    keys_command("show", "print the daemon's public key (what clients pass as --server-key)")
    add = keys_command("add", "authorize a client's public key under NAME")
    add.add_argument("name")
    add.add_argument("public_key", metavar="PUBLIC_KEY", help="the client's key (orchctl keys new prints it)")
    keys_command("list", "authorized clients (revoked ones too)")
    revoke = keys_command("revoke", "refuse NAME's key from its next connection on (no restart needed)")
    revoke.add_argument("name")


def cmd_keys(args) -> int:
    """``orchd keys init|show|add|list|revoke``: exit 0, or 1 with a one-line error (2: bad configuration)."""
    import json as _json

    from orchd import keys
    try:
        cfg = config.load(args.config, {"state_dir": args.state_dir})
    except (OSError, ValueError) as exc:
        print(f"orchd: bad configuration: {exc}", file=sys.stderr)
        return 2
    old_umask = os.umask(0o077)
    try:
        if args.keys_cmd in ("init", "add", "revoke"):
            prepare_state_dir(cfg.state_dir)
        store = keys.ClientStore(cfg.state_dir)
        match args.keys_cmd:
            case "init":
                pair = keys.init_server_keys(cfg.state_dir, force=args.force)
                out = {"public_key": pair.public.decode(), "fingerprint": keys.fingerprint(pair.public),
                       "secret_file": str(keys.curve_dir(cfg.state_dir) / (keys.SERVER_KEY + "_secret"))}
                text = (f"server key created: {out['public_key']} (fingerprint {out['fingerprint']})\n"
                        f"clients connect with: orchctl --endpoint tcp://HOST:PORT --server-key '{out['public_key']}'")
            case "show":
                pair = keys.load_server_keys(cfg.state_dir)
                out = {"public_key": pair.public.decode(), "fingerprint": keys.fingerprint(pair.public)}
                text = out["public_key"]
            case "add":
                entry = store.add(args.name, args.public_key)
                out = {"name": entry.name, "fingerprint": keys.fingerprint(entry.public_key)}
                text = f"authorized {entry.name} (fingerprint {out['fingerprint']})"
            case "list":
                rows = [{"name": c.name, "fingerprint": keys.fingerprint(c.public_key), "public_key": c.public_key,
                         "added_ts": c.added_ts, "revoked_ts": c.revoked_ts} for c in store.clients()]
                out = {"clients": rows}
                text = "\n".join(f"{r['name']:<20} {r['fingerprint']}  {'revoked' if r['revoked_ts'] else 'active'}"
                                 for r in rows) or "no authorized clients (add one: orchd keys add NAME PUBLIC_KEY)"
            case "revoke":
                entry = store.revoke(args.name)
                out = {"name": entry.name, "fingerprint": keys.fingerprint(entry.public_key), "revoked": True}
                text = f"revoked {entry.name} (fingerprint {out['fingerprint']}): refused from its next connection"
    except (keys.KeyFileError, OSError) as exc:
        print(f"orchd: keys {args.keys_cmd}: {exc}", file=sys.stderr)
        return 1
    finally:
        os.umask(old_umask)
    print(_json.dumps(out) if args.json else text)
    return 0


def cmd_web(args) -> int:
    """``orchd web``: the HTTP bridge in its own process (exit 2 bad configuration, 1 cannot listen)."""
    flags = {"state_dir": args.state_dir, "runtime_dir": args.runtime_dir}
    if args.http is not None:
        flags["http_listen"] = args.http
    try:
        cfg = config.load(args.config, flags)
        from orchd.web_auth import parse_listen
        listen = parse_listen(cfg.http_listen)
    except (OSError, ValueError) as exc:
        print(f"orchd: bad configuration: {exc}", file=sys.stderr)
        return 2
    if listen is None:
        print("orchd: web: the HTTP address is 'off': give --http HOST:PORT", file=sys.stderr)
        return 2
    from orchctl import profiles
    try:
        remote = profiles.resolve(args.endpoint, args.events_endpoint, args.server_key, args.client_key,
                                  args.profile)
    except profiles.ProfileError as exc:
        print(f"orchd: web: {exc}", file=sys.stderr)
        return 2
    log.setup(cfg.log_level, cfg.log_format)
    old_umask = os.umask(0o077)  # the token file and web.json are owner-only
    try:
        prepare_state_dir(cfg.state_dir)
        from orchd.web import serve_standalone
        return asyncio.run(serve_standalone(cfg, *listen, remote=remote))
    finally:
        os.umask(old_umask)


def link_server_keys(cfg: config.Config):
    """The daemon's CURVE server pair for a tcp host link (``orchd keys init``), None on ipc."""
    endpoint = cfg.host_link_endpoint or ""
    if endpoint and not endpoint.startswith(("tcp://", "ipc://")):
        raise StartupError(f"host_link_endpoint {endpoint}: agent hosts connect over tcp:// (with CURVE) "
                           "or ipc:// only")
    if not endpoint.startswith("tcp://"):
        return None
    from orchd import keys
    return keys.load_server_keys(cfg.state_dir)


def cmd_host(args) -> int:
    """``orchd host``: an agent host (exit 2 for bad arguments or unusable keys)."""
    from orchd import bus, keys
    from actors.hosting import AgentHost, default_name
    try:
        cfg = config.load(None, {"state_dir": args.state_dir})
        if args.slots < 0:
            raise ValueError("--slots must be 0 or more")
        curve = None
        if args.connect.startswith("tcp://"):
            if not args.server_key:
                raise ValueError("a tcp:// supervisor needs --server-key (its public CURVE key: orchd keys show)")
            curve = keys.ClientCurve(client=keys.load_client_keys(args.client_key),
                                     server_public=keys.read_server_public(args.server_key))
        bus.check_link_endpoint(args.connect, curve is not None)
    except (OSError, ValueError) as exc:
        print(f"orchd: host: {exc}", file=sys.stderr)
        return 2
    log.setup(cfg.log_level, cfg.log_format)
    if curve is not None:
        _log.info("host_client_key", fingerprint=keys.fingerprint(curve.client.public))
    host = AgentHost(args.connect, args.name or default_name(), args.slots, cfg.state_dir / "host",
                     args.heartbeat_s, args.grace_s, curve, cfg.max_frame_bytes, cfg.stop_grace_s)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await host.run(stop)
    wakeups.run(main(), cfg.wake_coalesce_us)
    return 0


def _doctor(args) -> int:
    from actors.doctor import main as doctor_main
    return doctor_main(args)


def _check_config(args) -> int:
    """``orchd check-config FILE``: "ok" and exit 0, or the one-line error and exit 2."""
    try:
        config.load(args.file, environ={})
    except (OSError, ValueError) as exc:
        print(f"orchd: bad configuration {args.file}: {exc}", file=sys.stderr)
        return 2
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
