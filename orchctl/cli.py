"""``orchctl``: the command-line client of orchd.

Exit codes: 0 ok; 1 the daemon answered with an error, or is running but
did not answer within the deadline; 2 usage error; 3 the daemon is not
there (said within 2 s).  The global options (``--json``,
``--runtime-dir``, ``--timeout``, ``--version``, and for a remote daemon
``--endpoint``, ``--events-endpoint``, ``--server-key``, ``--client-key``,
``--profile``: see orchctl/profiles.py) work before or after the
subcommand.  Only the protocol, wire and paths modules are imported, so it
starts fast; the plan and limit checks of ``submit`` import more, lazily.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from orchd import paths
from orchd import protocol as p

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class UsageError(Exception):
    pass


DEFAULT_TIMEOUT_S = 10.0
SLOW_TIMEOUT_S = 30.0  # submit and the session commands: the daemon may run git first


def _client(args):
    from orchctl.client import Client
    remote = _remote(args)
    if remote is not None:
        return Client(remote.control, timeout_s=args.timeout or DEFAULT_TIMEOUT_S, curve=remote.curve)
    return Client(_control(args), timeout_s=args.timeout or DEFAULT_TIMEOUT_S)


_REMOTE_UNSET = object()


def _remote(args):
    """The remote daemon the flags or ``--profile`` name (``orchctl.profiles.Remote``), or None: ipc."""
    cached = getattr(args, "_remote", _REMOTE_UNSET)
    if cached is not _REMOTE_UNSET:
        return cached
    if not any((args.endpoint, args.events_endpoint, args.server_key, args.client_key, args.profile)):
        args._remote = None  # the local ipc sockets (nothing more to import)
        return None
    from orchctl import profiles
    try:
        remote = profiles.resolve(args.endpoint, args.events_endpoint, args.server_key, args.client_key,
                                  args.profile)
    except profiles.ProfileError as exc:
        raise UsageError(str(exc)) from None
    args._remote = remote
    return remote


def _slow_timeout(args) -> float:
    return args.timeout or SLOW_TIMEOUT_S


def _control(args) -> str:
    return os.environ.get("ORCHD_CONTROL_ENDPOINT") or paths.control_endpoint(_runtime(args))


def _events(args) -> str:
    if (remote := _remote(args)) is not None:
        return remote.events
    return os.environ.get("ORCHD_EVENTS_ENDPOINT") or paths.events_endpoint(_runtime(args))


def _runtime(args) -> Path:
    return Path(args.runtime_dir) if args.runtime_dir else paths.default_runtime_dir()


def _print_json(obj) -> None:
    import msgspec
    sys.stdout.buffer.write(msgspec.json.encode(obj) + b"\n")
    sys.stdout.flush()


def _reply_or_exit(args, reply) -> int | None:
    """Print an Error reply and return its exit code; None if not an error."""
    if isinstance(reply, p.Error):
        if args.json:
            _print_json({"error": {"code": reply.code, "detail": reply.detail}})
        else:
            print(f"orchctl: {reply.detail} [{reply.code}]", file=sys.stderr)
        return EXIT_ERROR
    return None


def _resolve_session(args) -> None:
    """Replace ``args.session`` (a prefix, ``last`` or a full id) by the full id it means.

    Client-side, from one ``Status`` call (see ``orchctl.ids``); a full id
    is sent as it is.  No match is ``not_found`` and several matches are
    ``ambiguous`` (exit 1, naming the candidates).
    """
    from orchctl import ids
    from orchctl.client import Refused
    text = getattr(args, "session", None)
    if text is None or ids.is_full(text):
        return
    reply = _client(args).call(p.Status())
    if isinstance(reply, p.Error):
        raise Refused(reply)
    try:
        args.session = ids.pick(text, [(s.id, s.created_ts) for s in reply.sessions])
    except ids.NoMatch as exc:
        raise Refused(p.Error(code=p.ErrorCode.NOT_FOUND, detail=str(exc))) from None
    except ids.Ambiguous as exc:
        raise Refused(p.Error(code="ambiguous", detail=f"{text!r} could be any of {', '.join(exc.candidates)}: "
                                                       "give more of the id")) from None


def _load_file(path: str) -> dict:
    """A plan or scenario file: TOML by extension, else JSON."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        if path.endswith(".toml"):
            import tomllib
            return tomllib.loads(data.decode())
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid {'TOML' if path.endswith('.toml') else 'JSON'}: {exc}") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{path} must hold an object")
    return obj


def _check_plan(path: str, plan: dict) -> None:
    """What the plan file alone decides (keys, types, names, argv and env strings, weights,
    profiles): a bad file is a usage error, caught before anything is sent.

    Whether the plan can run with the daemon's agents (and its ``after``
    links, cycles, duplicate names) is the daemon's call: it answers
    ``bad_request`` (exit 1).
    """
    from actors.plans import PlanError, parse_plan
    try:
        parse_plan(plan, path)
    except PlanError as exc:
        raise UsageError(str(exc)) from None


def parse_limits(items: list[str]) -> dict:
    """``--limit KEY=VALUE`` options as typed values (``stall_s=30`` → 30.0; ``none`` → None).

    Keys and types are ``orchd.config.Limits``'s; a value must be a finite,
    non-negative number (or ``none`` where the limit may be off).
    """
    if not items:
        return {}  # pydantic is slow to import: only for limits to check
    import math

    import pydantic

    from orchd.config import Limits
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise UsageError(f"--limit wants KEY=VALUE, got {item!r}")
        if key not in Limits.model_fields:
            raise UsageError(f"unknown limit {key!r} (known: {', '.join(Limits.model_fields)})")
        raw = None if value.lower() in ("", "none", "null") else value
        try:
            typed = getattr(Limits.model_validate({key: raw}), key)
        except pydantic.ValidationError as exc:
            raise UsageError(f"invalid limit {item}: {exc.errors()[0]['msg']}") from None
        if typed is not None and not (math.isfinite(typed) and typed >= 0):
            raise UsageError(f"invalid limit {item}: must be a finite number, not negative")
        out[key] = typed
    return out


def cmd_submit(args) -> int:
    """``orchctl submit [TASK] --target DIR [--agents a,b] [--plan FILE] [--rehearse [SCENARIO]] [--limit K=V] --json``

    Wire: ``Submit{target, task, agents, plan, rehearse, scenario, limits}`` → ``SubmitReply{session}``.
    A malformed plan file or limit is a usage error (exit 2) before anything is sent;
    limits are sent as typed JSON (``--limit stall_s=30`` → ``{"stall_s": 30.0}``).
    """
    plan = _load_file(args.plan) if args.plan else None
    if plan is not None:
        _check_plan(args.plan, plan)
    rehearse = args.rehearse is not None
    scenario = None
    if isinstance(args.rehearse, str):
        # checked here, so a typo is a usage error before anything is sent; imported
        # only now, so orchctl starts fast
        from actors.rehearsal.scenario import ScenarioError, load_scenario
        try:
            scenario = load_scenario(args.rehearse)
        except ScenarioError as exc:
            raise UsageError(f"bad scenario {args.rehearse}: {exc}") from None
    limits = parse_limits(args.limit or [])
    agents = [a.strip() for a in args.agents.split(",") if a.strip()] if args.agents else None
    if not args.task and not plan:
        raise UsageError("give a TASK or --plan FILE")
    if args.planner and plan:
        raise UsageError("give either --plan or --planner, not both")
    req = p.Submit(target=str(Path(args.target).resolve()), task=args.task or "", agents=agents, plan=plan,
                   rehearse=rehearse, scenario=scenario, limits=limits or None, planner=args.planner)
    reply = _client(args).call(req, timeout_s=_slow_timeout(args))
    if (code := _reply_or_exit(args, reply)) is not None:
        return code
    if args.json:
        _print_json({"session": reply.session, "assignments": reply.assignments, "warnings": reply.warnings})
    else:
        from orchctl import render
        print(f"session {reply.session} submitted: {render.clean(', '.join(reply.assignments))}")
        print(f"next: orchctl watch {reply.session} --until-done    (or: orchctl status {reply.session})")
        for warning in reply.warnings:
            print(f"orchctl: warning: {render.clean(warning)}", file=sys.stderr)
    return EXIT_OK


def cmd_status(args) -> int:
    """``orchctl status [SESSION] --json``.  Wire: ``Status{session}`` → ``StatusReply{sessions}``."""
    from orchctl import render
    reply = _client(args).call(p.Status(session=args.session))
    if (code := _reply_or_exit(args, reply)) is not None:
        return code
    if args.json:
        _print_json(reply.sessions[0] if args.session else {"sessions": reply.sessions})
    elif args.session:
        print(render.session(reply.sessions[0]))
    else:
        print(render.sessions(reply.sessions))
    return EXIT_OK


def cmd_reviews(args) -> int:
    """``orchctl reviews SESSION --json``.  Wire: ``Reviews{session}`` → ``ReviewsReply{reviews}``."""
    from orchctl import render
    reply = _client(args).call(p.Reviews(session=args.session))
    if (code := _reply_or_exit(args, reply)) is not None:
        return code
    if args.json:
        _print_json({"reviews": reply.reviews})
    else:
        print(render.reviews(reply.reviews))
    return EXIT_OK


def cmd_hosts(args) -> int:
    """``orchctl hosts [--json]``.  Wire: ``Hosts{}`` → ``HostsReply{hosts, link}``."""
    reply = _client(args).call(p.Hosts())
    if (code := _reply_or_exit(args, reply)) is not None:
        return code
    if args.json:
        _print_json({"hosts": reply.hosts, "link": reply.link})
        return EXIT_OK
    if reply.link is None:
        print("agent hosts are off (set host_link_endpoint)")
    elif not reply.hosts:
        print(f"no agent host connected (they connect to {reply.link})")
    for h in reply.hosts:
        clis = ", ".join(f"{n} {v}".strip() for n, v in sorted(h.clis.items())) or "-"
        print(f"{h.name}  slots {h.busy}/{h.slots}  heard {h.last_heartbeat_s:.1f}s ago  clis: {clis}")
    return EXIT_OK


def cmd_recoveries(args) -> int:
    """``orchctl recoveries SESSION [--json]``.  Wire: ``Recoveries{session}`` → ``RecoveriesReply{recoveries}``."""
    from orchctl import render
    reply = _client(args).call(p.Recoveries(session=args.session))
    if (code := _reply_or_exit(args, reply)) is not None:
        return code
    if args.json:
        _print_json({"recoveries": reply.recoveries})
    else:
        print(render.recoveries(reply.recoveries))
    return EXIT_OK


def _simple(req_type):
    def run(args) -> int:
        if req_type is p.Answer:
            body = req_type(session=args.session, text=args.text)
        elif req_type is p.Review:
            body = req_type(session=args.session, worker=args.worker)
        else:
            body = req_type(session=args.session)
        reply = _client(args).call(body, timeout_s=_slow_timeout(args))
        if (code := _reply_or_exit(args, reply)) is not None:
            return code
        if args.json:
            _print_json({"ok": True, "session": args.session, "detail": reply.detail})
        else:
            print(reply.detail or f"{args.cmd}: ok")
        return EXIT_OK
    run.__doc__ = f"``orchctl {req_type.__struct_config__.tag} SESSION``.  Wire: ``{req_type.__name__}{{session}}`` → ``Ok``."
    return run


def cmd_watch(args) -> int:
    """``orchctl watch [SESSION] [--since SEQ] [--until-done] [--worker NAME] [--kind KIND] [--all] --json``.

    History, then live.  ``--worker`` / ``--kind`` (a prefix) pick the
    events printed, client-side; human output hides the agents' stderr
    (``worker.log``) unless ``--all`` or a ``--kind`` asks for it.

    Wire: ``Status{session}`` (an unknown SESSION is ``not_found``, exit 1),
    ``Sync{token}`` until ``~sync <token>`` arrives on the SUB socket (the
    subscription is live), then ``Replay{since, session}`` pages, then the
    PUB frames, with gaps the PUB left read again from the log (the Clone
    pattern).

    ``--until-done`` exits when SESSION ends: 0 if it ended ``done``, 1 if
    ``failed``, ``stopped`` or ``escalated`` (after printing every event up
    to its end).  It needs a SESSION: without one it is a usage error
    (exit 2), since "until done" has no single session to wait for and the
    history holds other sessions' ends.  That check comes after the daemon
    is found, so with no daemon the answer is still exit 3.
    """
    from orchctl.watch import watch
    client = _client(args)
    if args.until_done and args.session is None:
        client.ensure_reachable()
        raise UsageError("watch --until-done needs a SESSION (which session's end to wait for)")
    from orchctl.watch import NOISE_KINDS, Filter
    only = Filter(workers=tuple(args.worker or ()), kinds=tuple(args.kind or ()),
                  hide=() if args.json or args.all else NOISE_KINDS)
    return watch(client, _events(args), args.session, args.since, args.until_done, args.json, only)


def cmd_logs(args) -> int:
    """``orchctl logs SESSION [--worker W] [--tail N] [--follow] --json``: the session's agent text,
    tool results (ok/failed and a short output) and stderr.

    Without ``--follow``, what is recorded so far; with it, that history and
    then live lines until the session ends (exit 0) or Ctrl-C (130), by the
    same history-then-live cursor as ``watch``.  ``--tail N``: only the last
    N lines of the history (then, following, every new line).

    Wire: ``Status{session}`` (an unknown SESSION is ``not_found``, exit 1;
    a WORKER the session does not have is exit 1, naming its workers), then
    ``Replay{since, session}`` pages (following: ``Sync`` and the events
    SUB first, as ``watch``).
    """
    from orchctl.watch import history
    return history(_client(args), args.session, args.worker, args.json, tail=args.tail, follow=args.follow,
                   events_ep=_events(args))


def cmd_parse(args) -> int:
    """``orchctl parse --agent NAME FILE|-``: normalized agent events, no daemon."""
    from orchctl.parse import main as parse_main
    argv = ["--agent", args.agent, args.file]
    return parse_main(argv)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (0 < value < 86400):
        raise argparse.ArgumentTypeError(f"must be more than 0 and less than a day: {text!r}")
    return value


def _global_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The options every command takes, before or after its name.

    The top parser holds the defaults; each subcommand's copy has none
    (``SUPPRESS``), so an option given before the subcommand is not reset
    by the subcommand's parser.
    """
    def d(value):
        return value if defaults else argparse.SUPPRESS
    parser.add_argument("--json", action="store_true", default=d(False), help="machine-readable output")
    parser.add_argument("--runtime-dir", default=d(None),
                        help="the daemon's runtime dir (default: $ORCHD_RUNTIME_DIR, ...)")
    parser.add_argument("--timeout", type=_seconds, default=d(None), metavar="SECONDS",
                        help=f"how long to wait for the daemon's answer (default {DEFAULT_TIMEOUT_S:g}; "
                             f"{SLOW_TIMEOUT_S:g} for submit and the session commands)")
    parser.add_argument("--version", action="store_true", default=d(False), help="print the version and exit")
    parser.add_argument("--endpoint", default=d(None), metavar="tcp://HOST:PORT",
                        help="a remote daemon's control endpoint (CURVE; needs --server-key)")
    parser.add_argument("--events-endpoint", default=d(None), metavar="tcp://HOST:PORT",
                        help="the remote daemon's events endpoint (default: the --endpoint port + 1)")
    parser.add_argument("--server-key", default=d(None), metavar="KEY",
                        help="the remote daemon's public key (orchd keys show), or a file holding it")
    parser.add_argument("--client-key", default=d(None), metavar="FILE",
                        help="this client's secret key file (default: $XDG_CONFIG_HOME/orchctl/client.key_secret)")
    parser.add_argument("--profile", default=d(None), metavar="NAME",
                        help="a remote daemon named in $XDG_CONFIG_HOME/orchctl/config.toml [profiles.NAME]")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of lines: {text!r}") from None
    if not (0 <= value <= 10_000_000):
        raise argparse.ArgumentTypeError(f"a number of lines from 0 to 10000000, got {text!r}")
    return value


def cmd_web(args) -> int:
    """``orchctl web [--json]``: the dashboard's URL and token (from the running bridge's ``web.json``).

    No wire message: the bridge writes ``<runtime dir>/web.json`` (0600) when it
    listens and removes it when it stops; the token file is in the state dir.
    Exit 3 when no bridge is running.
    """
    info_path = _runtime(args) / "web.json"
    try:
        info = json.loads(info_path.read_text())
        token = Path(info["token_file"]).read_text().strip()
    except FileNotFoundError:
        msg = f"no web dashboard is running (no {info_path}): start 'orchd run' (http_listen) or 'orchd web'"
        if args.json:
            _print_json({"error": {"code": "unreachable", "detail": msg}})
        print(f"orchctl: {msg}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except PermissionError:
        print(f"orchctl: permission denied: {info_path} belongs to another user", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"orchctl: {info_path} is not usable: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        _print_json({"url": info["url"], "token": token})
    else:
        print(f"{info['url']}#token={token}")


def cmd_keys(args) -> int:
    """``orchctl keys new [--file PATH] [--force] [--json]``: a client key pair (no daemon, no wire message).

    The secret file (0600, default ``$XDG_CONFIG_HOME/orchctl/client.key_secret``)
    stays here; the printed public key is what the daemon's operator authorizes
    with ``orchd keys add NAME PUBLIC_KEY``.
    """
    from orchd import keys
    path = Path(args.file).expanduser() if args.file else keys.default_client_key_path()
    try:
        pair = keys.new_client_keys(path, force=args.force)
    except (keys.KeyFileError, OSError) as exc:
        print(f"orchctl: keys new: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        _print_json({"public_key": pair.public.decode(), "fingerprint": keys.fingerprint(pair.public),
                     "secret_file": str(path)})
    else:
        print(pair.public.decode())
        print(f"orchctl: secret key in {path} (fingerprint {keys.fingerprint(pair.public)}); "
              f"authorize it on the daemon's machine: orchd keys add NAME '{pair.public.decode()}'", file=sys.stderr)
    return EXIT_OK


def cmd_completion(args) -> int:
    """``orchctl completion bash|zsh|fish``: a completion script to source (no daemon needed).

    ``--list-sessions`` (what the scripts run): the daemon's session ids, one per
    line; nothing, and exit 0, when no daemon answers within a second.
    """
    from orchctl import completion
    if args.list_sessions:
        from orchctl.client import Busy, Refused, Unreachable
        try:
            reply = _client(args).call(p.Status(), timeout_s=1.0)
        except (Unreachable, Busy, Refused):
            return EXIT_OK
        if isinstance(reply, p.StatusReply):
            print("\n".join(s.id for s in reply.sessions))
        return EXIT_OK
    if args.shell is None:
        raise UsageError("completion needs a shell: bash, zsh or fish")
    sys.stdout.write(completion.SHELLS[args.shell](build_parser(), HIDDEN))
    return EXIT_OK


def _seq(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a seq number: {text!r}") from None
    if not (0 <= value <= 2**63 - 1):
        raise argparse.ArgumentTypeError(f"a seq is a number from 0 to 2**63-1, got {text!r}")
    return value


HIDDEN: tuple[str, ...] = ()
"""Commands left out of ``--help`` until they work (still callable).  A subcommand
added without ``help=`` is not listed; ``help=argparse.SUPPRESS`` would print
``==SUPPRESS==`` in the list on Python before 3.13."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="orchctl", description="Control the orchd daemon.")
    _global_options(ap, defaults=True)
    commands = ap.add_subparsers(dest="cmd", metavar="COMMAND")

    def command(name: str, **kw) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, **kw)
        _global_options(parser, defaults=False)  # so they work after the subcommand too
        return parser

    s = command("submit", help="start a session")
    s.add_argument("task", nargs="?", help="the task, in words")
    s.add_argument("--target", required=True, help="the git repository to work on")
    s.add_argument("--agents", help="comma-separated agents to use (default plan only)")
    s.add_argument("--plan", help="plan file (JSON or TOML)")
    s.add_argument("--rehearse", nargs="?", const=True, metavar="SCENARIO",
                   help="run the real CLIs against the built-in scripted model server")
    s.add_argument("--planner", metavar="AGENT", help="ask AGENT for the plan (JSON); default plan as fallback")
    s.add_argument("--limit", action="append", metavar="KEY=VALUE",
                   help="override a limit for this session (e.g. stall_s=30)")
    s.set_defaults(func=cmd_submit)

    s = command("status", help="sessions and workers")
    s.add_argument("session", nargs="?")
    s.set_defaults(func=cmd_status)

    for name, typ, helptext in (("pause", p.Pause, "pause a session's agents"),
                                ("resume", p.Resume, "resume a paused session"),
                                ("stop", p.Stop, "stop a session"),
                                ("clean", p.Clean, "commit leftover work, remove a finished session's clones")):
        s = command(name, **({"help": helptext} if helptext else {}))
        s.add_argument("session")
        s.set_defaults(func=_simple(typ))
    s = command("review", help="ask the other agents to review the work now")
    s.add_argument("session")
    s.add_argument("--worker", metavar="NAME", help="only this assignment (default: every running one)")
    s.set_defaults(func=_simple(p.Review))
    s = command("answer", help="answer a paused session's question and resume it")
    s.add_argument("session")
    s.add_argument("text")
    s.set_defaults(func=_simple(p.Answer))
    s = command("reviews", help="a session's reviews, verdicts and decisions")
    s.add_argument("session")
    s.set_defaults(func=cmd_reviews)
    s = command("recoveries", help="a session's failed runs and what recovery did (relaunch, park, escalate)")
    s.add_argument("session")
    s.set_defaults(func=cmd_recoveries)

    s = command("hosts", help="the agent hosts connected to the daemon: slots, CLIs, last heartbeat")
    s.set_defaults(func=cmd_hosts)

    s = command("watch", help="events: history then live")
    s.add_argument("session", nargs="?")
    s.add_argument("--since", type=_seq, default=0, metavar="SEQ", help="only events after this seq")
    s.add_argument("--until-done", action="store_true",
                   help="exit when SESSION ends: 0 if it ended done, else 1 (needs SESSION)")
    s.add_argument("--worker", action="append", metavar="NAME",
                   help="only this worker's events (may be repeated)")
    s.add_argument("--kind", action="append", metavar="KIND",
                   help="only events whose kind starts with KIND, e.g. agent. (may be repeated)")
    s.add_argument("--all", action="store_true",
                   help="also the agents' stderr lines (worker.log), hidden by default in human output")
    s.set_defaults(func=cmd_watch)

    s = command("logs", help="a session's agent output and tool results so far")
    s.add_argument("session")
    s.add_argument("--worker", metavar="NAME", help="only this worker (an unknown one is an error)")
    s.add_argument("--tail", type=_count, metavar="N", help="only the last N lines of the history")
    s.add_argument("--follow", "-f", action="store_true",
                   help="then print new lines as they come, until the session ends (or Ctrl-C)")
    s.set_defaults(func=cmd_logs)

    s = command("web", help="the web dashboard's URL and token")
    s.set_defaults(func=cmd_web)
    s = command("keys", help="this client's CURVE key pair for a remote daemon: keys new")
    keys_sub = s.add_subparsers(dest="keys_cmd", metavar="new", required=True)
    new = keys_sub.add_parser("new", help="create a client key pair and print its public key")
    new.add_argument("--file", metavar="PATH", help="the secret key file (default: "
                     "$XDG_CONFIG_HOME/orchctl/client.key_secret)")
    new.add_argument("--force", action="store_true", help="replace an existing pair")
    _global_options(new, defaults=False)
    s.set_defaults(func=cmd_keys)
    s = command("completion", help="print a shell completion script: source <(orchctl completion bash)")
    s.add_argument("shell", nargs="?", choices=("bash", "zsh", "fish"))
    s.add_argument("--list-sessions", action="store_true", help=argparse.SUPPRESS)  # what the scripts call
    s.set_defaults(func=cmd_completion)

    s = command("parse", help="normalize an agent's stream (no daemon)")
    s.add_argument("--agent", required=True)
    s.add_argument("file", help="a file, or - for stdin")
    s.set_defaults(func=cmd_parse)
    return ap


def main(argv: list[str] | None = None) -> int:
    from orchctl.client import Busy, Refused, Unreachable
    from orchd.wire import WireError

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--server-key" in argv:  # a key may start with "-" (only then is orchd.keys imported)
        from orchd.keys import argv_with_keys
        argv = argv_with_keys(argv)
    args = parser.parse_args(argv)
    if args.version:
        from orchd import __version__
        if args.json:
            _print_json({"version": __version__, "protocol": p.VERSION})
        else:
            print(f"orchctl {__version__}")
        return EXIT_OK
    if args.cmd is None:
        parser.error("a command is required (see orchctl --help)")
    try:
        _resolve_session(args)
        return args.func(args)
    except UsageError as exc:
        print(f"orchctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Unreachable as exc:
        if args.json:
            _print_json({"error": {"code": "unreachable", "detail": str(exc)}})
        print(str(exc), file=sys.stderr)
        return EXIT_UNREACHABLE
    except Busy as exc:
        if args.json:
            _print_json({"error": {"code": "timeout", "detail": str(exc)}})
        print(str(exc), file=sys.stderr)
        return EXIT_ERROR
    except Refused as exc:
        return _reply_or_exit(args, exc.error)
    except WireError as exc:
        print(f"orchctl: {exc.detail}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
