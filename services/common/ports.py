"""Choosing loopback ports that another process cannot take before our service binds them.

A port the kernel hands out for ``bind(0)`` lies in its ephemeral range, the same range every
outgoing connection on the machine draws its local port from; between "found free" and "the
service bound it", any connection can take it (``[Errno 98] address already in use``). Ports
below the ephemeral range are only ever taken by an explicit bind, so they stay free unless
another server asks for that very number.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Sequence
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000  # above the registered ports most local servers use (8000s, 5432, 6379, ...)
_handed_out: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections (Linux default 32768-60999)."""
    try:
        low, high = (int(x) for x in _RANGE_FILE.read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind ``port`` now (as uvicorn does, with SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_base_port(offsets: Sequence[int], host: str = "127.0.0.1", attempts: int = 200) -> int:
    """A base port B with every B + offset free and outside the ephemeral range.

    Random, so two callers at once (two demos, parallel tests) rarely pick the same base;
    bases handed out earlier in this process are not handed out again.
    """
    low, _ = ephemeral_range()
    top = max(offsets, default=0)
    candidates = (_LOWEST, low - top - 1) if low - top - 1 > _LOWEST else (1024, 65535 - top)
    for _ in range(attempts):
        base = random.randint(*candidates)
        ports = [base + off for off in offsets]
        if any(p in _handed_out for p in ports):
            continue
        if all(is_free(p, host) for p in ports):
            _handed_out.update(ports)
            return base
    raise RuntimeError(f"no free ports on {host} between {candidates[0]} and {candidates[1]}")


def free_port(host: str = "127.0.0.1") -> int:
    """One free port outside the ephemeral range."""
    return free_base_port([0], host)
