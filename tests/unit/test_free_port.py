"""Ports for the servers REMITS starts itself: never one the kernel may hand to an outgoing
connection in the meantime, never the same one twice."""

from __future__ import annotations

import socket

from shared import embedded


def test_ports_are_below_the_ephemeral_range_bindable_and_distinct() -> None:
    low, _ = embedded._ephemeral_range()
    ports = [embedded.free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    for port in ports:
        assert embedded._LOWEST_PORT <= port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_something_listens_on_is_not_given() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert not embedded._bindable(listener.getsockname()[1])
