"""``orchctl parse --agent NAME FILE|-``: an agent CLI's raw stdout in,
normalized agent events out (one JSON object per line), no daemon.

The input is read in binary and split on b"\\n" exactly as the worker
frames it; each line is decoded as UTF-8 with replacement, fed to the
adapter's parser, and the stream is closed with ``finish(None)`` (the exit
code is unknown here).  Imports only msgspec, the protocol and the
adapters, so it starts fast.

Exit codes: 0 parsed (whatever the stream contained); 2 usage error
(unknown agent, unreadable file).
"""

from __future__ import annotations

import sys
from typing import BinaryIO

import msgspec

from actors.agents import ADAPTERS

USAGE = "usage: orchctl parse --agent NAME [--json] FILE|-"


def _args(argv: list[str]) -> tuple[str, str] | str:
    """(agent, path), or an error message."""
    agent = path = None
    it = iter(argv)
    for a in it:
        if a == "--agent":
            agent = next(it, None)
            if agent is None:
                return "--agent needs a NAME"
        elif a.startswith("--agent="):
            agent = a.split("=", 1)[1]
        elif a == "--json":
            pass  # output is always JSON; accepted like every orchctl command
        elif a in ("-h", "--help"):
            return USAGE
        elif a.startswith("-") and a != "-":
            return f"unknown option {a!r}"
        elif path is None:
            path = a
        else:
            return f"unexpected argument {a!r}"
    if agent is None or path is None:
        return "--agent NAME and FILE (or - for stdin) are required"
    return agent, path


def _run(agent: str, src: BinaryIO, out: BinaryIO, live: bool) -> None:
    parser = ADAPTERS[agent].new_parser()
    encode = msgspec.json.Encoder().encode
    for raw in src:  # binary iteration splits on b"\n" only
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        events = parser.feed_line(raw.decode("utf-8", errors="replace"))
        for ev in events:
            out.write(encode(ev) + b"\n")
        if live and events:
            out.flush()  # stdin may be a live `tail -f`: show events as they come
    for ev in parser.finish(None):
        out.write(encode(ev) + b"\n")
    out.flush()


def main(argv: list[str]) -> int:
    """``argv`` is what follows ``orchctl parse``."""
    parsed = _args(argv)
    if isinstance(parsed, str):
        print(f"orchctl parse: {parsed}\n{USAGE}" if parsed != USAGE else USAGE, file=sys.stderr)
        return 2
    agent, path = parsed
    if agent not in ADAPTERS:
        print(f"orchctl parse: unknown agent {agent!r} (known: {', '.join(sorted(ADAPTERS))})",
              file=sys.stderr)
        return 2
    out = sys.stdout.buffer
    try:
        if path == "-":
            _run(agent, sys.stdin.buffer, out, live=True)
            return 0
        try:
            src = open(path, "rb")
        except OSError as e:
            print(f"orchctl parse: cannot read {path}: {e.strerror or e}", file=sys.stderr)
            return 2
        with src:
            _run(agent, src, out, live=False)
        return 0
    except BrokenPipeError:
        # `orchctl parse ... | head` closed the pipe: not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
