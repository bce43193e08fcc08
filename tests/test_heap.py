"""Once started, the daemon keeps its long-lived heap out of the cyclic collector's way.

``orchd.app._trim_heap`` runs when the actors are ready: a collection, then ``gc.freeze()``,
so that a full (gen-2) collection under load no longer walks the modules, validators and
actors (measured in benchmarks/README.md, seventh round: 58-87 ms -> 9-12 ms pauses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import gc, json
import orchd.app, orchd.journal, actors.supervisor  # what a started daemon has loaded
before = len(gc.get_objects())
orchd.app._trim_heap()
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(), "left": len(gc.get_objects())}))
"""


def test_the_started_daemons_heap_is_frozen_out_of_full_collections():
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["frozen"] > 0.9 * got["before"], got  # nearly everything the start made is frozen...
    assert got["left"] < 0.05 * got["frozen"], got   # ...and a full collection walks only the rest
