"""Host-port reservations against the host's sockets: what another program can and cannot do
while pynet holds a port, on both families."""

import errno
import ipaddress
import socket

import pytest

from plugin.ports import ANY, ANY_V6, PortReservations
from plugin.sysctl import Sysctl


def bind_fails(family: int, address: str, port: int, reuse: bool) -> bool:
    """Whether a TCP listener of another program on ``address``:``port`` is refused."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
            sock.listen(1)
        except OSError as exc:
            assert exc.errno == errno.EADDRINUSE, exc
            return True
        return False


@pytest.fixture
def ports() -> PortReservations:
    return PortReservations(Sysctl())


def test_a_dual_binding_holds_one_port_on_both_families(ports: PortReservations) -> None:
    port = ports.reserve_both("tcp", 0, 0)
    try:
        for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET, "127.0.0.1"),
                                (socket.AF_INET6, "::"), (socket.AF_INET6, "::1")):
            for reuse in (False, True):  # dockerd and docker-proxy set SO_REUSEADDR
                assert bind_fails(family, address, port, reuse), (address, reuse)
        assert {(k.host_ip, k.port) for k in ports.held()} == {(ANY, port), (ANY_V6, port)}
    finally:
        ports.release("tcp", ANY, port)
        ports.release("tcp", ANY_V6, port)
    assert not bind_fails(socket.AF_INET6, "::", port, reuse=True)


def test_the_host_reaching_an_ipv6_reservation_over_loopback_is_reset_at_once(
        ports: PortReservations) -> None:
    """::1 is not DNATed (the kernel does not route it off the host), so a host client of
    [::1]:port meets the reservation itself: it must be told no, not left hanging."""
    port = ports.reserve("tcp", ANY_V6, 0, 0)
    try:
        for _ in range(2):  # the refuser keeps serving
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as client:
                client.settimeout(2)
                with pytest.raises(ConnectionResetError):  # at connect, or at the first read
                    client.connect(("::1", port))
                    client.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    client.recv(100)
    finally:
        ports.release("tcp", ANY_V6, port)


def test_families_do_not_collide(ports: PortReservations) -> None:
    v4 = ports.reserve("udp", ANY, 0, 0)
    try:
        v6 = ports.reserve("udp", ipaddress.IPv6Address("::1"), v4, v4)
        assert v6 == v4
        ports.release("udp", ipaddress.IPv6Address("::1"), v6)
    finally:
        ports.release("udp", ANY, v4)
