"""A free TCP port: the kernel's pick of one nobody listens on right now, so concurrent jobs, tests and
benchmarks on one machine (a process group's store, a Serve proxy, a Ray head) never claim the same one."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """host "" : free on every interface (a port other nodes connect to)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
