"""Host ports for published container ports: allocation, conflict checks, reservation.

Docker does none of this for a remote driver. pynet publishes ports in the kernel (DNAT) rather
than through proxy processes, and holds a bound socket per binding so that neither another
container nor a host program can take the same address and port while it is published.
IPv4 and IPv6 bindings are apart (IPv6 sockets are IPV6_V6ONLY), as docker-proxy's are: ``::``
does not take 0.0.0.0's port.

Connections never reach a reservation, being DNATed before, except a host client's to
``[::1]:port``: the kernel cannot DNAT ::1 off the host. Those are reset at once by a thread
that accepts and drops them (``_Refuser``), rather than left in a backlog no one serves.
"""

import errno
import ipaddress
import selectors
import socket
import struct
import threading
from dataclasses import dataclass

from plugin.errors import Conflict
from plugin.sysctl import Sysctl

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
ANY = ipaddress.IPv4Address("0.0.0.0")
ANY_V6 = ipaddress.IPv6Address("::")
_SOCKET_TYPES = {
    "tcp": (socket.SOCK_STREAM, socket.IPPROTO_TCP),
    "udp": (socket.SOCK_DGRAM, socket.IPPROTO_UDP),
    "sctp": (socket.SOCK_STREAM, socket.IPPROTO_SCTP),
}


@dataclass(frozen=True)
class Key:
    """One reserved host address and port."""

    proto: str
    host_ip: Address
    port: int

    def overlaps(self, other: "Key") -> bool:
        """Two bindings of one family collide on the same port unless both name different
        specific IPs."""
        return (self.proto == other.proto and self.port == other.port
                and self.host_ip.version == other.host_ip.version
                and (self.host_ip == other.host_ip or self.host_ip.is_unspecified
                     or other.host_ip.is_unspecified))


class _Refuser:
    """Resets every connection to the IPv6 stream reservations it watches (see the module
    docstring); its thread starts with the first one."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def watch(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        with self._lock:
            self._selector.register(sock, selectors.EVENT_READ)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="refuser", daemon=True)
                self._thread.start()

    def forget(self, sock: socket.socket) -> None:
        with self._lock:
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass  # not watched (an IPv4 or datagram reservation)

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select(timeout=1.0):
                try:
                    conn, _peer = key.fileobj.accept()  # type: ignore[union-attr]
                except OSError:
                    continue  # released meanwhile, or the client gave up
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # linger 0: a reset, at once


class PortReservations:
    """The host ports pynet holds, each backed by a bound socket."""

    def __init__(self, sysctl: Sysctl) -> None:
        self._sysctl = sysctl
        self._held: dict[Key, socket.socket | None] = {}
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()
        self._refuser = _Refuser()

    def _take(self, key: Key, sock: socket.socket | None) -> None:
        """Record a reservation (the caller holds the lock)."""
        self._held[key] = sock
        if sock is not None and key.host_ip.version == 6 and sock.type == socket.SOCK_STREAM:
            self._refuser.watch(sock)

    def reserve(self, proto: str, host_ip: Address, start: int, end: int) -> int:
        """Reserve a port in ``start..end`` (0: an ephemeral one) and return it."""
        return self._reserve(proto, (host_ip,), start, end)

    def reserve_both(self, proto: str, start: int, end: int) -> int:
        """Reserve one port in ``start..end`` (0: an ephemeral one) on 0.0.0.0 and on ::."""
        return self._reserve(proto, (ANY, ANY_V6), start, end)

    def _reserve(self, proto: str, host_ips: tuple[Address, ...], start: int, end: int) -> int:
        """Reserve the first port free on every one of ``host_ips``."""
        with self._lock:
            for port in self._candidates(proto, start, end):
                keys = [Key(proto, host_ip, port) for host_ip in host_ips]
                if any(key.overlaps(k) for key in keys for k in self._held):
                    continue
                sockets = []
                try:
                    for key in keys:
                        sockets.append(_bind(key))
                except OSError as exc:
                    for sock in sockets:
                        if sock is not None:
                            sock.close()
                    if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                        continue
                    raise Conflict(f"cannot reserve {proto} {keys[len(sockets)].host_ip}:"
                                   f"{port}: {exc.strerror}; give a host address this "
                                   "machine has") from exc
                for key, sock in zip(keys, sockets, strict=True):
                    self._take(key, sock)
                if not start:
                    self._last[proto] = port
                return port
        where = " and ".join(str(ip) for ip in host_ips)
        if start:
            span = f"{start}" if start == end else f"{start}-{end}"
            raise Conflict(f"host port {span}/{proto} on {where} is already in use (by another "
                           "container or a host program); publish on a different host port")
        raise Conflict(f"no free ephemeral {proto} port on {where}; free some ports")

    def hold(self, proto: str, host_ip: Address, port: int) -> None:
        """Re-take a reservation recorded before a restart; tolerate losing the socket race."""
        key = Key(proto, host_ip, port)
        with self._lock:
            if key in self._held:
                return
            try:
                self._take(key, _bind(key))
            except OSError:
                self._held[key] = None  # the DNAT rule still wins; keep the table consistent

    def release(self, proto: str, host_ip: Address, port: int) -> None:
        """Give a reservation back; unknown ones are fine."""
        with self._lock:
            sock = self._held.pop(Key(proto, host_ip, port), None)
        if sock is not None:
            self._refuser.forget(sock)
            sock.close()

    def held(self) -> set[Key]:
        """What is reserved now."""
        with self._lock:
            return set(self._held)

    def _candidates(self, proto: str, start: int, end: int) -> list[int]:
        if start:
            return list(range(start, end + 1))
        low, high = 32768, 60999
        text = self._sysctl.read("net/ipv4/ip_local_port_range")
        if text:
            low, high = (int(x) for x in text.split())
        first = self._last.get(proto, high) + 1
        if not low <= first <= high:
            first = low
        return list(range(first, high + 1)) + list(range(low, first))


def _bind(key: Key) -> socket.socket | None:
    kind, number = _SOCKET_TYPES[key.proto]
    try:
        sock = socket.socket(socket.AF_INET if key.host_ip.version == 4 else socket.AF_INET6,
                             kind, number)
    except OSError as exc:
        if exc.errno in (errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT):
            return None  # no sctp module: nothing can listen there either
        raise
    try:
        if key.host_ip.version == 6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            # Connections a program (docker-proxy, a server) recently closed on this port sit
            # in TIME_WAIT for a minute and would refuse a plain bind; every TCP server sets
            # this. It does not let anyone share the port: Linux refuses to bind a port that
            # has a listener, whatever the options.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((str(key.host_ip), key.port))
        if kind == socket.SOCK_STREAM:
            sock.listen(8)  # a bound-only socket would not stop a SO_REUSEADDR listener
    except OSError:
        sock.close()
        raise
    return sock
