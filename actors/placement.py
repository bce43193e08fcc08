"""Where a run goes: this machine or an agent host (pure, no I/O).

The decision, documented in docs/running.md ("Agent hosts"):

* only assignment runs in a git working copy move (the planner, reviewers and runs in a target that
  is not a git repository stay here: their inputs and outputs are not a branch);
* ``[placement.agents] <agent> = "local"`` keeps that agent here; ``"hosts"`` sends it to a host
  whenever one has a free slot and the CLI; ``"any"`` (the default) runs it here while this machine
  has a free slot (``local_slots``; no limit by default, so nothing moves until it is set) and on a
  host after that;
* among hosts: the one with the most free slots that has the agent's CLI (``command`` needs none),
  then by name, so placement is stable;
* when no host fits, the run stays here, over ``local_slots`` if need be: a run is never held back
  for lack of a slot (the session's own limits bound how many run).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HostSlots:
    """What placement knows of one connected host."""

    name: str
    slots: int
    busy: int                 # runs placed on it that have not ended
    clis: frozenset[str]


def place(agent: str, movable: bool, local_busy: int, local_slots: int | None, preference: str,
          hosts: list[HostSlots]) -> str | None:
    """The host to run on, or None for this machine."""
    if not movable or preference == "local":
        return None
    if preference != "hosts" and (local_slots is None or local_busy < local_slots):
        return None
    fits = [h for h in hosts if h.busy < h.slots and (agent == "command" or agent in h.clis)]
    if not fits:
        return None
    return min(fits, key=lambda h: (h.busy - h.slots, h.name)).name
