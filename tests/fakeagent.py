#!/usr/bin/env python3
"""A scripted agent program for tests (the process boundary; not our code under test).

Usage: fakeagent.py OP [OP ...], run in order:
  json:N          print N JSON lines {"i": k, "pad": "..."} as fast as possible
  line:TEXT       print TEXT and a newline
  event:JSON      print a JSON line as given
  err:TEXT        print TEXT on stderr
  partial:TEXT    print TEXT without a newline (then stdout is closed by exit)
  junk:N          N random bytes (with NUL and invalid UTF-8), then a newline
  long:N          one line of N 'x' bytes
  replay:FILE     copy FILE to stdout
  touch:PATH      create PATH (tells a test "I got here")
  waitfile:PATH   wait (up to 60 s) until PATH exists
  write:NAME:TEXT write TEXT to NAME in the working directory
  prompt:PATH     append the prompt orchd gave ($ORCHD_PROMPT) and a separator line to PATH
  hang            block until killed
  bg:PIDFILE      start `sleep 1000` in the background (same process group, inheriting
                  stdout and stderr, so the pipes stay open after we exit); its pid goes to PIDFILE
  bgsid:PIDFILE   the same in a new session: out of reach of a kill of our process group
  exit:CODE       exit with CODE
  kill:SIG        kill itself with signal SIG
"""

import os
import random
import signal
import subprocess
import sys
import time

out = sys.stdout.buffer


def main(ops: list[str]) -> int:
    for op in ops:
        name, _, arg = op.partition(":")
        if name == "json":
            pad = "x" * 120
            w = out.write
            for i in range(int(arg)):
                w(b'{"i":%d,"pad":"%s"}\n' % (i, pad.encode()))
        elif name == "line":
            out.write(arg.encode() + b"\n")
        elif name == "event":
            out.write(arg.encode() + b"\n")
        elif name == "err":
            out.flush()
            sys.stderr.write(arg + "\n")
            sys.stderr.flush()
        elif name == "partial":
            out.write(arg.encode())
        elif name == "junk":
            rnd = random.Random(int(arg))
            data = bytes(rnd.randrange(256) for _ in range(int(arg))).replace(b"\n", b"\xff")
            out.write(data + b"\x00\xc3\x28\n")
        elif name == "long":
            out.write(b"x" * int(arg) + b"\n")
        elif name == "replay":
            with open(arg, "rb") as fh:
                out.write(fh.read())
        elif name == "touch":
            out.flush()
            open(arg, "w").close()
        elif name == "waitfile":
            out.flush()
            deadline = time.monotonic() + 60
            while not os.path.exists(arg) and time.monotonic() < deadline:
                signal.sigtimedwait([], 0.01) if hasattr(signal, "sigtimedwait") else None
        elif name == "prompt":
            with open(arg, "a") as fh:
                fh.write(os.environ.get("ORCHD_PROMPT", "") + "\n=====\n")
        elif name == "write":
            fname, _, text = arg.partition(":")
            with open(fname, "w") as fh:
                fh.write(text)
        elif name in ("bg", "bgsid"):
            out.flush()
            child = subprocess.Popen(["sleep", "1000"], start_new_session=name == "bgsid")
            with open(arg, "w") as fh:
                fh.write(str(child.pid))
        elif name == "hang":
            out.flush()
            while True:
                signal.pause()
        elif name == "exit":
            out.flush()
            return int(arg)
        elif name == "kill":
            out.flush()
            os.kill(os.getpid(), int(arg))
        else:
            sys.stderr.write(f"fakeagent: unknown op {op!r}\n")
            return 99
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
