#!/usr/bin/env python3
"""A scripted reviewer program for tests (the process boundary; not our code under test).

Usage: fakereviewer.py SCRIPT.json LOGDIR

orchd runs it as the ``command`` reviewer: the prompt is in $ORCHD_PROMPT,
the run's name (``_review-<id>-<index>-<attempt>``) in $ORCHD_REVIEWER.  The
prompt is saved to LOGDIR.  SCRIPT maps keys to behaviours; the first key
found of ``ASSIGNMENT/ROUND/INDEX/ATTEMPT``, ``ASSIGNMENT/ROUND/INDEX``,
``ASSIGNMENT/ROUND``, ``ASSIGNMENT``, ``*`` is used.  A behaviour is a dict:
  {"verdict": "approve", "summary": "...", "findings": [...]}  the JSON answer
  {"raw": "TEXT"}      print TEXT as the answer
  {"exit": N}          print nothing and exit N
  {"hang": true}       sleep until killed
  {"write": "NAME"}    also try to write NAME in the working directory first
  {"usage": N}         first report N output tokens (an agent.usage event)
  {"hang_once": PATH}  the first run (PATH missing: it is created) hangs; later runs answer
"""

import json
import os
import re
import sys
import time


def main() -> int:
    script = json.load(open(sys.argv[1]))
    logdir = sys.argv[2]
    prompt = os.environ.get("ORCHD_PROMPT", "")
    m = re.search(r"^orchd-review: (\S+) round (\d+)$", prompt, re.MULTILINE)
    assignment, rnd = (m.group(1), m.group(2)) if m else ("?", "0")
    _, rid, index, attempt = os.environ.get("ORCHD_REVIEWER", "_review-x-0-0").split("-")
    with open(os.path.join(logdir, f"{assignment}-{rnd}-{index}-{attempt}.txt"), "w") as fh:
        fh.write(prompt)
    for key in (f"{assignment}/{rnd}/{index}/{attempt}", f"{assignment}/{rnd}/{index}", f"{assignment}/{rnd}",
                assignment, "*"):
        if key in script:
            b = script[key]
            break
    else:
        b = {"verdict": "approve", "summary": "fine"}
    if "write" in b:
        try:
            with open(b["write"], "w") as fh:
                fh.write("written by a reviewer\n")
        except OSError:
            pass
    if "usage" in b:
        print(json.dumps({"kind": "agent.usage", "input_tokens": 0, "output_tokens": int(b["usage"])}), flush=True)
    if "hang_once" in b and not os.path.exists(b["hang_once"]):
        open(b["hang_once"], "w").close()
        b = {"hang": True}
    if b.get("hang"):
        while True:
            time.sleep(3600)
    if "exit" in b:
        return int(b["exit"])
    answer = b["raw"] if "raw" in b else json.dumps(
        {"verdict": b["verdict"], "summary": b.get("summary", ""), "findings": b.get("findings", [])})
    # as an agent.text event: a bare JSON line from a command is agent.output, not its answer
    print(json.dumps({"kind": "agent.text", "text": answer}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
