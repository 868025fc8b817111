"""Where the runtimes are: a fixed list of addresses, or a DNS name resolved again and again.

A headless Kubernetes Service resolves to one A/AAAA record per ready runtime pod, so
re-resolving it every refresh follows pods as they come and go.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import Protocol

from gateway.config import split_host_port

log = logging.getLogger(__name__)


class Discovery(Protocol):
    async def addresses(self) -> list[str]:
        """The runtime addresses (HOST:PORT) known now."""
        ...


class StaticDiscovery:
    """The addresses given on the command line."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self._addresses = sorted(set(addresses))

    async def addresses(self) -> list[str]:
        return list(self._addresses)

    def __repr__(self) -> str:
        return f"runtimes {','.join(self._addresses) or '(none)'}"


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ipaddress.ip_address(ip).version == 6 else f"{ip}:{port}"


class DnsDiscovery:
    """Every address a DNS name resolves to, with one port. A failed lookup keeps the last
    answer (a DNS hiccup must not empty the pool)."""

    def __init__(self, name_port: str) -> None:
        self.name, self.port = split_host_port(name_port, "runtime_dns")
        self._last: list[str] = []

    async def addresses(self) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                self.name, self.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except OSError as e:
            log.warning("cannot resolve runtimes %s:%d: %s", self.name, self.port, e)
            return list(self._last)
        self._last = sorted({_address(str(info[4][0]), self.port) for info in infos})
        return list(self._last)

    def __repr__(self) -> str:
        return f"runtimes from DNS {self.name}:{self.port}"
