"""The runtime supervisor: restart types, restart intensity, escalation, ordered shutdown."""

from __future__ import annotations

import asyncio

import pytest

from orchd.actor import ChildSpec, Escalation, Supervisor
from orchd.supervision import Restart


def test_crashing_children_are_restarted_then_escalate():
    async def main():
        runs: list[int] = []

        async def crashy(restarts: int) -> None:
            runs.append(restarts)
            raise RuntimeError("bug")

        sup = Supervisor("t", max_restarts=3, period_s=60)
        sup.start_child(ChildSpec("crashy", crashy, Restart.PERMANENT))
        with pytest.raises(Escalation, match="crashy crashed too often"):
            await asyncio.wait_for(sup.wait_escalation(), 10)
        return runs

    assert asyncio.run(main()) == [0, 1, 2, 3]


def test_restart_types_and_exit_notification():
    async def main():
        ended: list[tuple[str, bool]] = []
        done = asyncio.Event()
        counts = {"transient_ok": 0, "transient_bug": 0, "temporary_bug": 0}

        def on_exit(name, crashed):
            ended.append((name, crashed))
            if len(ended) == 3:
                done.set()

        async def transient_ok(restarts):
            counts["transient_ok"] += 1

        async def transient_bug(restarts):
            counts["transient_bug"] += 1
            if restarts == 0:
                raise RuntimeError("first run fails")

        async def temporary_bug(restarts):
            counts["temporary_bug"] += 1
            raise RuntimeError("never restarted")

        sup = Supervisor("t", max_restarts=5, period_s=60, on_exit=on_exit)
        sup.start_child(ChildSpec("transient_ok", transient_ok, Restart.TRANSIENT))
        sup.start_child(ChildSpec("transient_bug", transient_bug, Restart.TRANSIENT))
        sup.start_child(ChildSpec("temporary_bug", temporary_bug, Restart.TEMPORARY))
        await asyncio.wait_for(done.wait(), 10)
        return counts, sorted(ended)

    counts, ended = asyncio.run(main())
    assert counts == {"transient_ok": 1, "transient_bug": 2, "temporary_bug": 1}
    assert ended == [("temporary_bug", True), ("transient_bug", False), ("transient_ok", False)]


def test_shutdown_stops_children_in_reverse_order_without_restarting():
    async def main():
        order: list[str] = []
        started = asyncio.Event()

        def child(name):
            async def run(restarts):
                if restarts:
                    order.append(f"restarted {name}")
                try:
                    if name == "b":
                        started.set()
                    await asyncio.Event().wait()
                finally:
                    order.append(name)
            return run

        sup = Supervisor("t")
        sup.start_child(ChildSpec("a", child("a"), Restart.PERMANENT, shutdown_s=2))
        sup.start_child(ChildSpec("b", child("b"), Restart.PERMANENT, shutdown_s=2))
        await asyncio.wait_for(started.wait(), 5)
        await sup.shutdown()
        return order, sup.running()

    order, running = asyncio.run(main())
    assert order == ["b", "a"] and running == []
