"""``orchctl``: the command-line client of orchd.

Exit codes: 0 ok; 1 the daemon answered with an error; 2 usage error;
3 the daemon cannot be reached (said within 2 s).  Every command takes
``--json``.  Only the protocol, wire and paths modules are imported, so it
starts fast.
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


def _client(args):
    from orchctl.client import Client
    return Client(_control(args))


def _control(args) -> str:
    return os.environ.get("ORCHD_CONTROL_ENDPOINT") or paths.control_endpoint(_runtime(args))


def _events(args) -> str:
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


def cmd_submit(args) -> int:
    """``orchctl submit [TASK] --target DIR [--agents a,b] [--plan FILE] [--rehearse [SCENARIO]] --json``

    Wire: ``Submit{target, task, agents, plan, rehearse, scenario, limits}`` → ``SubmitReply{session}``.
    """
    plan = _load_file(args.plan) if args.plan else None
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
    limits = {}
    for item in args.limit or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--limit wants KEY=VALUE, got {item!r}")
        limits[key] = json.loads(value) if value not in ("",) else None
    agents = [a.strip() for a in args.agents.split(",") if a.strip()] if args.agents else None
    if not args.task and not plan:
        raise UsageError("give a TASK or --plan FILE")
    if args.planner and plan:
        raise UsageError("give either --plan or --planner, not both")
    req = p.Submit(target=str(Path(args.target).resolve()), task=args.task or "", agents=agents, plan=plan,
                   rehearse=rehearse, scenario=scenario, limits=limits or None, planner=args.planner)
    reply = _client(args).call(req, timeout_s=30)
    if (code := _reply_or_exit(args, reply)) is not None:
        return code
    if args.json:
        _print_json({"session": reply.session, "assignments": reply.assignments})
    else:
        print(f"session {reply.session} submitted: {', '.join(reply.assignments)}")
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


def _simple(req_type):
    def run(args) -> int:
        body = req_type(session=args.session, text=args.text) if req_type is p.Answer else req_type(session=args.session)
        reply = _client(args).call(body, timeout_s=30)
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
    """``orchctl watch [SESSION] [--since SEQ] [--until-done] --json``: history, then live.

    Wire: ``Sync{token}`` until ``~sync <token>`` arrives on the SUB socket
    (the subscription is live), then ``Replay{since, session}`` pages, then
    the PUB frames with a higher ``seq`` (the Clone pattern).
    """
    from orchctl.watch import watch
    return watch(_client(args), _events(args), args.session, args.since, args.until_done, args.json,
                 kinds=None)


def cmd_logs(args) -> int:
    """``orchctl logs SESSION [--worker W] --json``: the session's agent text and stderr so far.

    Wire: ``Replay{since, session}`` pages.
    """
    from orchctl.watch import history
    return history(_client(args), args.session, args.worker, args.json)


def cmd_parse(args) -> int:
    """``orchctl parse --agent NAME FILE|-``: normalized agent events, no daemon."""
    from orchctl.parse import main as parse_main
    argv = ["--agent", args.agent, args.file]
    return parse_main(argv)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--runtime-dir", help="the daemon's runtime dir (default: $ORCHD_RUNTIME_DIR, ...)")
    ap = argparse.ArgumentParser(prog="orchctl", description="Control the orchd daemon.", parents=[common])
    sub = ap.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("submit", parents=[common], help="start a session")
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

    s = sub.add_parser("status", parents=[common], help="sessions and workers")
    s.add_argument("session", nargs="?")
    s.set_defaults(func=cmd_status)

    for name, typ, helptext in (("pause", p.Pause, "pause a session's agents"),
                                ("resume", p.Resume, "resume a paused session"),
                                ("stop", p.Stop, "stop a session"),
                                ("review", p.Review, "ask for a review round now"),
                                ("clean", p.Clean, "remove a finished session's worktrees")):
        s = sub.add_parser(name, parents=[common], help=helptext)
        s.add_argument("session")
        s.set_defaults(func=_simple(typ))
    s = sub.add_parser("answer", parents=[common], help="answer a paused session's question")
    s.add_argument("session")
    s.add_argument("text")
    s.set_defaults(func=_simple(p.Answer))

    s = sub.add_parser("watch", parents=[common], help="events: history then live")
    s.add_argument("session", nargs="?")
    s.add_argument("--since", type=int, default=0, metavar="SEQ", help="only events after this seq")
    s.add_argument("--until-done", action="store_true", help="exit when the session(s) end")
    s.set_defaults(func=cmd_watch)

    s = sub.add_parser("logs", parents=[common], help="a session's agent output so far")
    s.add_argument("session")
    s.add_argument("--worker")
    s.set_defaults(func=cmd_logs)

    s = sub.add_parser("parse", parents=[common], help="normalize an agent's stream (no daemon)")
    s.add_argument("--agent", required=True)
    s.add_argument("file", help="a file, or - for stdin")
    s.set_defaults(func=cmd_parse)
    return ap


def main(argv: list[str] | None = None) -> int:
    from orchctl.client import Unreachable
    from orchd.wire import WireError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"orchctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Unreachable as exc:
        if getattr(args, "json", False):
            _print_json({"error": {"code": "unreachable", "detail": str(exc)}})
        print(str(exc), file=sys.stderr)
        return EXIT_UNREACHABLE
    except WireError as exc:
        print(f"orchctl: {exc.detail}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
