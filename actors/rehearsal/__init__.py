"""Rehearsals: the real agent CLIs against a scripted model server, offline.

* ``scenario``: the scenario format, its strict validator and the packaged
  default (pure; orchctl imports it to check a file before sending it);
* ``dialects``: the three model-API dialects, without I/O;
* ``modelserver``: the HTTP server on loopback (``python -m
  actors.rehearsal.modelserver``);
* ``sessions``: ``Rehearsals``, one server per rehearsal session of the daemon.

Agent-side setup (config files, base URLs, fake keys) is agent knowledge and
lives in ``actors.agents.rehearsal``.  This file imports nothing, so loading
``actors.rehearsal.scenario`` stays cheap.
"""
