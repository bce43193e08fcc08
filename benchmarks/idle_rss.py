#!/usr/bin/env python3
"""Idle RSS: a real ``orchd run`` with the default config, nothing submitted.

    python benchmarks/idle_rss.py [--idle-s 5] [--repeat 3]

Each repeat starts ``orchd run`` (temp state dir, short runtime dir, the
dashboard bridge on as by default, on a free port), waits ``--idle-s``
seconds and reads its ``VmRSS`` and which libraries it has mapped.  The
baseline, measured the same way in the same run: a bare interpreter of the
same Python (``python -c`` sleeping).  Figures: ``rss_idle_mb`` (median),
``python_mb`` (the baseline's median), ``openssl_loaded`` / ``aiohttp_loaded``
(mapped in any repeat).  Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(argv: list[str], idle_s: float, env: dict[str, str]) -> tuple[float, str]:
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(idle_s)  # the figure is "after this long idle": nothing to wait for but the clock
        if proc.poll() is not None:
            raise SystemExit(f"{argv[:4]} exited {proc.returncode}")
        return rss_mb(proc.pid), Path(f"/proc/{proc.pid}/maps").read_text()
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--idle-s", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHD_")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    daemon, bare, maps = [], [], []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="oi", dir="/tmp") as tmp:
            rss, mapped = measure([sys.executable, "-m", "orchd.app", "run", "--state-dir", f"{tmp}/state",
                                   "--runtime-dir", f"{tmp}/rt", "--http", "127.0.0.1:0"], args.idle_s, env)
        daemon.append(rss)
        maps.append(mapped)
        bare.append(measure([sys.executable, "-c", "import time; time.sleep(3600)"], args.idle_s, env)[0])
        print(f"repeat {i + 1}: orchd run {rss:.1f} MB, bare python {bare[-1]:.1f} MB", flush=True)
    out = {"rss_idle_mb": round(statistics.median(daemon), 1), "python_mb": round(statistics.median(bare), 1),
           "openssl_loaded": any("libssl.so" in m or "libcrypto.so" in m for m in maps),
           "aiohttp_loaded": any("/aiohttp/" in m for m in maps), "repeat": args.repeat, "idle_s": args.idle_s,
           "python": sys.version.split()[0]}
    print(f"  RSS idle (median)        {out['rss_idle_mb']:>6.1f} MB   (bare python {out['python_mb']:.1f} MB)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
