#!/usr/bin/env python3
"""Cost of secret redaction per typical line, against baselines measured in the same run.

    python benchmarks/redact.py [--calls 200000] [--repeat 7]

Lines are 200 bytes: agent-like text without a secret, and the same with one
``sk-ant-...`` key in it.  Each figure is the median over ``--repeat`` runs of
``--calls`` calls (ns of this process's CPU time per call, so that other load on
the machine inflates it less than wall-clock time would; loop overhead included
for every row alike).
Baselines: ``str.find`` of ``"sk-"`` over the same line (one scan of it) and
``re.search`` of one simple pattern (``sk-[A-Za-z0-9]{16,}``).  The daemon's
redactor is built from an environment holding two credentials, as in practice.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchd.redact import Redactor  # noqa: E402

PLAIN = ("2026-11-25T20:41:07Z compiled 14 modules in 2.3s, running pytest -q on tests/test_pure.py "
         "with 128 cases; the cache at /var/cache/orchd holds 3 entries (hit rate 91%) and nothing else.")
SECRET = "sk-ant-api03-Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1JkLz"


def _line(text: str) -> str:
    return (text + " " + "." * 200)[:200]


def _per_call_ns(fn, arg, calls: int, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.process_time_ns()
        for _ in range(calls):
            fn(arg)
        runs.append((time.process_time_ns() - t0) / calls)
    return statistics.median(runs)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    plain = _line(PLAIN)
    secret = _line(PLAIN[:80] + " " + SECRET + " " + PLAIN[80:])
    assert len(plain) == len(secret) == 200
    r = Redactor.from_environ({"ANTHROPIC_API_KEY": "not-really-a-key-0123456789",
                               "GITHUB_TOKEN": "ghp_notreallyatoken0123"})
    assert r(plain) is plain and SECRET not in r(secret)
    simple = re.compile(r"sk-[A-Za-z0-9]{16,}")
    frame = plain.encode()
    rows = [
        ("baseline: str.find('sk-')", _per_call_ns(lambda s: s.find("sk-"), plain, args.calls, args.repeat)),
        ("baseline: re.search(one simple pattern)", _per_call_ns(simple.search, plain, args.calls, args.repeat)),
        ("redact(line), no secret", _per_call_ns(r, plain, args.calls, args.repeat)),
        ("redact(line), one sk-ant key", _per_call_ns(r, secret, args.calls // 10, args.repeat)),
        ("maybe_bytes(frame), no secret", _per_call_ns(r.maybe_bytes, frame, args.calls, args.repeat)),
    ]
    base = rows[0][1]
    print(f"200-byte lines, median of {args.repeat} runs, ns per call (ratio to str.find)")
    for name, ns in rows:
        print(f"  {name:42} {ns:8.0f} ns  {ns / base:5.1f}x")
    no_secret = rows[2][1]
    print(f"typical line without a secret: {no_secret / 1000:.2f} us (target < 1 us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
