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
#: The kernel's ephemeral range, when ``/proc`` does not say (Linux's default).
EPHEMERAL_DEFAULT = (32_768, 60_999)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2]
    except (OSError, ValueError):
        return EPHEMERAL_DEFAULT
    return int(low), int(high)


def free_ports(count: int = 1) -> int:
    """The first of ``count`` consecutive loopback ports, each free a moment ago, all below
    the ephemeral range (above it, on a host whose range starts below 20,000). Raises
    ``AssertionError`` if 200 random picks find no free run."""
    low, high = _ephemeral_range()
    if low - count > LOWEST:
        lowest, top = LOWEST, low - count
    else:  # a host whose ephemeral range starts low: the ports above it
        lowest, top = high + 1, 65_536 - count
    if top <= lowest:
        raise AssertionError(f"the ephemeral range {low}-{high} leaves no room for servers")
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(lowest, top)
        if all(_free(port) for port in range(base, base + count)):
            return base
    raise AssertionError(f"no run of {count} free ports between {lowest} and {top + count}")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
