"""A free TCP port: one nobody listens on right now, so concurrent jobs, tests and benchmarks on one machine (a
process group's store, a Serve proxy, a Ray head) never claim the same one.

Picked below the kernel's ephemeral range (where outgoing connections get their local ports) and above Ray's
worker ports (10002-19999): a port handed out there can be taken by one of Ray's many gRPC connections between
the pick and the bind, and a Serve proxy that binds it minutes later then fails with 'Address already in use'.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20000  # above Ray's default worker ports


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """host "" : free on every interface (a port other nodes connect to)."""
    top = _ephemeral_start()
    # The OS's randomness: neither disturbs nor follows a seeded `random` (two processes seeded alike would collide).
    for port in random.SystemRandom().sample(range(LOWEST, top), min(200, max(0, top - LOWEST))):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # nothing free below the ephemeral range: the kernel's pick
        s.bind((host, 0))
        return s.getsockname()[1]


def node_port() -> tuple[str, int]:
    """This node's address and a port free on every interface (one the other nodes connect to).

    Called on the learner's first node: by the driver when that is its own node, else as a Ray task there. It lives
    in this module because a task's worker imports the function's module, and this one imports nothing heavy (the
    learner's module would cost the worker torch and transformers, seconds of start-up CPU on a small machine)."""
    from ray.util import get_node_ip_address

    return get_node_ip_address(), free_port("")
