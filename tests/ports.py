"""Loopback ports for the servers the tests start (brokers, controllers, metrics, Prometheus).

A port is picked below the kernel's ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by default). A port in that
range is handed out to every client connection the tests open: between the pick and
the server's bind (a broker's JVM takes seconds to start), or while a killed broker
is down, a connection to another broker can take it ("Socket server failed to bind
to 127.0.0.1:40790: Address already in use", seen once in CI). Below it, only a
server that binds that port by number can.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_ports"]

#: The lowest port picked: above the registered ports most local services use.
LOWEST = 20_000
#: Where the kernel's ephemeral range starts, when ``/proc`` does not say.
EPHEMERAL_DEFAULT = 32_768


def _ephemeral_start() -> int:
    try:
        low = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
    except (OSError, IndexError):
        return EPHEMERAL_DEFAULT
    return int(low)


def free_ports(count: int = 1) -> int:
    """The first of ``count`` consecutive loopback ports, each free a moment ago, all below
    the ephemeral range. Raises ``AssertionError`` if 200 random picks find no free run."""
    top = _ephemeral_start() - count
    if top <= LOWEST:
        raise AssertionError(f"the ephemeral range starts at {top + count}: no room below it")
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(LOWEST, top)
        if all(_free(port) for port in range(base, base + count)):
            return base
    raise AssertionError(f"no run of {count} free ports between {LOWEST} and {top + count}")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
