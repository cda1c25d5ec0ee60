"""The TCP port a server listens on, checked free on every address its host name resolves to.

gRPC binds a name such as "localhost" on each address it resolves to (127.0.0.1 and ::1) and, where
one of them is in use, listens on the others and only logs it: a client of the name may then reach
whatever holds the port on that address. So the port is checked first, on every address; port 0
becomes one port free on all of them.
"""

from __future__ import annotations

import errno
import socket

from kakeya.runtime.common.errors import FailedPrecondition

ATTEMPTS = 100  # ports tried for port 0 before giving up


def listen_port(host: str, port: int) -> int:
    """`port`, or for 0 a port free on every address of `host`; FailedPrecondition when `port` is
    in use on one of them. An address this machine does not have (no IPv6) is skipped, as gRPC
    skips it."""
    addresses = _addresses(host)
    if port:
        taken = _taken(addresses, port)
        if taken:
            raise FailedPrecondition(f"cannot listen on {host}:{port}: the port is in use on {taken}")
        return port
    usable = [address for address in addresses if _any_free(address) is not None]
    if not usable:
        raise FailedPrecondition(f"cannot listen on {host}: none of its addresses is an address here")
    for _ in range(ATTEMPTS):
        candidate = _any_free(usable[0])
        if candidate is not None and not _taken(usable[1:], candidate):
            return candidate
    raise FailedPrecondition(f"cannot listen on {host}: no port free on all of {', '.join(a[1][0] for a in usable)}")


def _addresses(host: str) -> list[tuple[int, tuple]]:
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FailedPrecondition(f"cannot listen on {host}: {exc.strerror}") from exc
    unique: dict[tuple[int, str], tuple[int, tuple]] = {}
    for family, _, _, _, sockaddr in infos:
        unique.setdefault((family, sockaddr[0]), (family, sockaddr))
    return list(unique.values())


def _probe(family: int, sockaddr: tuple, port: int) -> socket.socket:
    probe = socket.socket(family, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: TIME_WAIT is no conflict
    if family == socket.AF_INET6:
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    probe.bind((sockaddr[0], port, *sockaddr[2:]))
    return probe


def _taken(addresses: list[tuple[int, tuple]], port: int) -> str | None:
    """The first address on which `port` is in use, or None."""
    for family, sockaddr in addresses:
        try:
            _probe(family, sockaddr, port).close()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return sockaddr[0]
            # EADDRNOTAVAIL and the like: not an address here; gRPC skips it too
    return None


def _any_free(address: tuple[int, tuple]) -> int | None:
    """A port free on this address, or None where it is not an address here."""
    family, sockaddr = address
    try:
        with _probe(family, sockaddr, 0) as probe:
            return probe.getsockname()[1]
    except OSError:
        return None
