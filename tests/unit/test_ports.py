"""free_port picks a port nobody listens on, outside the range the kernel hands to outgoing connections."""

import socket

from cluster.runtime import ports


def test_free_port_is_bindable_and_below_the_ephemeral_range():
    for _ in range(20):
        port = ports.free_port()
        assert ports.LOWEST <= port < ports._ephemeral_start()
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_picked(monkeypatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        monkeypatch.setattr(ports, "LOWEST", taken)
        monkeypatch.setattr(ports, "_ephemeral_start", lambda: taken + 2)
        assert all(ports.free_port() != taken for _ in range(10))  # the one other port in range, or the kernel's
