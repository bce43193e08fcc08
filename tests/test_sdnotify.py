"""sd_notify against a real NOTIFY_SOCKET datagram socket made by the test: READY after the actors are ready,
STATUS with the sessions, WATCHDOG only while the actors answer, STOPPING on shutdown, RELOADING/READY on SIGHUP."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from orchctl.client import Client
from orchd import protocol as p
from orchd.sdnotify import Notifier, status_line, watchdog_s
from tests.conftest import wait_for, write_plan

TICK_S = 0.2  # WATCHDOG_USEC below is 400 ms: a ping every 200 ms


class NotifySocket:
    """A datagram socket like systemd's; every datagram it gets, with its arrival time."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address if not address.startswith("@") else "\0" + address[1:])
        self.sock.settimeout(0.1)
        self.got: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            self.got.append((time.monotonic(), data.decode()))

    def lines(self, since: float = 0.0) -> list[str]:
        return [line for t, msg in list(self.got) if t >= since for line in msg.split("\n")]

    def has(self, line: str, since: float = 0.0) -> bool:
        return line in self.lines(since)

    def last_status(self) -> str | None:
        return next((line[len("STATUS="):] for line in reversed(self.lines()) if line.startswith("STATUS=")), None)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify_socket(short_tmp):
    ns = NotifySocket(str(short_tmp / "notify"))
    yield ns
    ns.close()


def test_ready_status_watchdog_until_an_actor_wedges_then_stopping(daemon_factory, notify_socket, short_tmp,
                                                                   git_repo, tmp_path):
    d = daemon_factory(config="fault_injection = true\n", start=False,
                       env={"NOTIFY_SOCKET": str(short_tmp / "notify"), "WATCHDOG_USEC": "400000"})
    d.start()
    wait_for(lambda: notify_socket.has("READY=1"), 10, "READY=1")
    # READY=1 is sent once the supervisor is ready, which is after its barrier came back through the journal
    assert notify_socket.lines()[0] == "READY=1"
    wait_for(lambda: notify_socket.has("STATUS=0 sessions running, 0 agents running, 0 waiting for an answer"),
             10, "the first STATUS= summary")

    # STATUS follows the sessions; the agents do not inherit NOTIFY_SOCKET
    release = tmp_path / "release"
    plan = write_plan(tmp_path / "plan.json", [
        {"name": "w", "agent": "command",
         "argv": ["sh", "-c", f'echo "socket=${{NOTIFY_SOCKET:-none}}"; while [ ! -e {release} ]; do sleep 0.05; done']}])
    sid = d.ctl_json("submit", "--plan", str(plan), "--target", str(git_repo))["session"]
    wait_for(lambda: notify_socket.last_status() == "1 session running, 1 agent running, 0 waiting for an answer",
             10, "STATUS= with the running session")
    release.touch()
    assert d.wait_session(sid)["state"] == "done"
    wait_for(lambda: notify_socket.last_status() == "0 sessions running, 0 agents running, 0 waiting for an answer",
             10, "STATUS= back to no session")
    assert "socket=none" in d.ctl("logs", sid).stdout.decode()

    # WATCHDOG=1 every tick while the actors answer
    t0 = time.monotonic()
    wait_for(lambda: notify_socket.lines(t0).count("WATCHDOG=1") >= 3, 10, "three watchdog pings")

    # a wedged supervisor stops the pings (the rest of the daemon goes on: the journal still answers)
    c = Client(f"ipc://{d.runtime_dir}/control", timeout_s=5)
    try:
        assert isinstance(c.call(p.InjectFault(actor="supervisor", fault="wedge")), p.Ok)
    finally:
        c.close()
    wait_for(lambda: "actors_not_answering" in d.log(), 10, "the watchdog to notice the wedged supervisor")
    quiet_from = time.monotonic()
    wait_for(lambda: time.monotonic() - quiet_from > 5 * TICK_S, 10, "five ticks")
    assert "WATCHDOG=1" not in notify_socket.lines(quiet_from), "a wedged actor must stop the watchdog pings"
    assert d.proc.poll() is None

    # STOPPING on shutdown (the wedged supervisor is cancelled like any actor)
    assert d.stop() == 0
    assert "STOPPING=1" in notify_socket.lines(quiet_from)


def test_a_wedged_journal_stops_the_watchdog_pings_too(daemon_factory, notify_socket, short_tmp):
    d = daemon_factory(config="fault_injection = true\n", start=False,
                       env={"NOTIFY_SOCKET": str(short_tmp / "notify"), "WATCHDOG_USEC": "400000"})
    d.start()
    t0 = time.monotonic()
    wait_for(lambda: notify_socket.lines(t0).count("WATCHDOG=1") >= 2, 10, "two watchdog pings")
    c = Client(f"ipc://{d.runtime_dir}/control", timeout_s=5)
    try:
        assert isinstance(c.call(p.InjectFault(actor="journal", fault="wedge")), p.Ok)
        wait_for(lambda: "actors_not_answering" in d.log(), 10, "the watchdog to notice the wedged journal")
        quiet_from = time.monotonic()
        wait_for(lambda: time.monotonic() - quiet_from > 5 * TICK_S, 10, "five ticks")
        assert "WATCHDOG=1" not in notify_socket.lines(quiet_from)
        assert isinstance(c.call(p.Ping()), p.Pong)  # the supervisor still serves: only the journal is deaf
    finally:
        c.close()
    assert d.stop() == 0
    assert "STOPPING=1" in notify_socket.lines(quiet_from)


def test_reloading_then_ready_around_a_sighup(daemon_factory, notify_socket, short_tmp, tmp_path):
    d = daemon_factory(config="", start=False, env={"NOTIFY_SOCKET": str(short_tmp / "notify")})
    d.start()
    wait_for(lambda: notify_socket.has("READY=1"), 10, "READY=1")
    assert not any(line.startswith("WATCHDOG") for line in notify_socket.lines())  # no WATCHDOG_USEC: no pings
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: notify_socket.has("READY=1", since=t0), 10, "READY=1 after the reload")
    after = notify_socket.lines(t0)
    assert after.index("RELOADING=1") < after.index("READY=1")
    assert any(line.startswith("MONOTONIC_USEC=") for line in after)
    assert d.stop() == 0


def test_notifier_speaks_to_an_abstract_socket_and_reads_the_watchdog_settings():
    name = f"@orchd-test-{os.getpid()}-{time.monotonic_ns()}"
    ns = NotifySocket(name)
    try:
        n = Notifier({"NOTIFY_SOCKET": name})
        assert n.enabled and n.ready("up")
        wait_for(lambda: ns.lines() == ["READY=1", "STATUS=up"], 5, "the datagram on the abstract socket")
        n.close()
    finally:
        ns.close()
    assert not Notifier({}).enabled and not Notifier({}).send("READY=1")  # outside systemd: a no-op
    assert watchdog_s({"WATCHDOG_USEC": "30000000"}, 7) == 30.0
    assert watchdog_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, 7) is None  # meant for another process
    assert watchdog_s({"WATCHDOG_USEC": "junk"}, 7) is None
    assert status_line({"running": 2, "paused": 1}, {"claude/running": 2, "codex/running": 1, "codex/done": 4}, 1) \
        == "2 sessions running, 3 agents running, 1 paused, 1 waiting for an answer"
