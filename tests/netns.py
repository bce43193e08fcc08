"""A small network lab for tests: namespaces joined by veth pairs to a bridge, addresses only inside.

``Lab`` makes a hub namespace holding a bridge; ``lab.add("a")`` makes a
namespace with loopback up and one veth whose other end is on the bridge,
addressed ``10.<net>.0.<n>/24``.  Nothing is added to the test runner's own
namespace: the members reach each other through the hub and nothing else.
``lab.cut(node)`` / ``lab.restore(node)`` take a member's link down and up
(the hub side, so the member's processes see a silent network, not an error).

Processes run inside a namespace with ``node.popen(argv)`` / ``node.run(argv)``
(``ip netns exec``); the filesystem is shared, so ipc sockets and files work
as usual.  Needs root and ``ip``; ``netlab`` (a pytest fixture) skips
elsewhere and removes every namespace it made, even when the test fails.
Names carry the pid, so labs of concurrent test runs do not collide.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

import pytest


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def available() -> str | None:
    """None if namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the 'ip' command is missing"
    return None


@dataclass
class Node:
    name: str          # the namespace's name
    addr: str          # its address on the lab network
    host_if: str       # the veth end on the hub's bridge
    procs: list[subprocess.Popen] = field(default_factory=list)

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(self.argv(argv), **kw)
        self.procs.append(proc)
        return proc

    def run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        kw.setdefault("timeout", 60)
        return subprocess.run(self.argv(argv), **kw)


class Lab:
    def __init__(self, net: int | None = None) -> None:
        self.tag = f"o{os.getpid() % 100000}"
        self.net = net if net is not None else 64 + os.getpid() % 128
        self.hub = f"{self.tag}hub"
        self.nodes: list[Node] = []
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "set", "lo", "up")
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")

    def add(self, name: str) -> Node:
        n = len(self.nodes) + 2
        ns = f"{self.tag}{name}"
        inner, outer = f"{self.tag}i{n}", f"{self.tag}o{n}"  # at most 15 characters
        _ip("netns", "add", ns)
        node = Node(name=ns, addr=f"10.{self.net}.0.{n}", host_if=outer)
        self.nodes.append(node)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", inner, "netns", ns, "type", "veth", "peer", "name", outer, "netns", self.hub)
        _ip("-n", ns, "addr", "add", f"{node.addr}/24", "dev", inner)
        _ip("-n", ns, "link", "set", inner, "up")
        _ip("-n", self.hub, "link", "set", outer, "master", "br0")
        _ip("-n", self.hub, "link", "set", outer, "up")
        return node

    def cut(self, node: Node) -> None:
        _ip("-n", self.hub, "link", "set", node.host_if, "down")

    def restore(self, node: Node) -> None:
        _ip("-n", self.hub, "link", "set", node.host_if, "up")

    def close(self) -> None:
        for node in self.nodes:
            for proc in node.procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
        # deleting a namespace deletes its veth ends (and their peers)
        for ns in [n.name for n in self.nodes] + [self.hub]:
            _ip("netns", "del", ns, check=False)


@pytest.fixture
def netlab():
    why = available()
    if why is not None:
        pytest.skip(why)
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()
