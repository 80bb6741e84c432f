"""Connectivity probes between the host, containers and an "outside" host, from the test process.

A probe opens its socket inside the network namespace it starts from (``setns`` on the calling
thread only, just for the ``socket()`` call: a socket stays in the namespace it was made in), so
one pytest process can test from the host, from every container and from the outside namespace
in parallel, without ``docker exec`` round trips through a busy dockerd.

Every server answers with the address the connection came from, so a probe tells not only
whether a path works but also whether the source was masqueraded on the way. In containers that
server is busybox ``httpd`` (its CGI sees ``REMOTE_ADDR``); busybox has no UDP server, so UDP and
the outside host's servers are ``PeerServer`` threads here.
"""

import errno
import ipaddress
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from lab import run
from lab.netns import in_netns

# busybox httpd on 80 and 9000; /cgi-bin/ip prints the client's address.
SERVER = ("sh", "-c",
          "mkdir -p /www/cgi-bin && "
          "printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' "
          "> /www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && "
          "httpd -p 9000 -h /www && exec httpd -f -p 80 -h /www")
REQUEST = b"GET /cgi-bin/ip HTTP/1.0\r\n\r\n"


def family(ip: str) -> int:
    """The socket family of address ``ip``."""
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def ns_socket(path: str | None, kind: int, ip: str = "0.0.0.0") -> socket.socket:
    """A socket of ``ip``'s family that lives in the namespace at ``path`` (IPv6 ones are
    IPv6 only, so an IPv4 server may share the port)."""
    with in_netns(path):
        sock = socket.socket(family(ip), kind)
    if family(ip) == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


def _source(answer: bytes) -> str:
    """The client address a server reported (httpd writes ``[::ffff:a.b.c.d]`` for IPv4)."""
    lines = [line.strip() for line in answer.decode(errors="replace").splitlines()]
    last = next((line for line in reversed(lines) if line), "")
    last = last.strip("[]")
    if last.startswith("::ffff:"):
        last = last[len("::ffff:"):]
    try:
        return str(ipaddress.ip_address(last))
    except ValueError:
        return f"?{last[:40]}"


def _failure(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    return errno.errorcode.get(exc.errno or 0, str(exc)).lower()


def probe_tcp(ns: str | None, ip: str, port: int, timeout: float = 2.0) -> str:
    """Connect from ``ns`` to ``ip:port``: ``ok <source seen>``, ``refused``, ``timeout``..."""
    sock = ns_socket(ns, socket.SOCK_STREAM, ip)
    sock.settimeout(timeout)
    try:
        sock.connect((ip, port))
        sock.sendall(REQUEST)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    except OSError as exc:
        return _failure(exc)
    finally:
        sock.close()
    return f"ok {_source(answer)}"


def probe_udp(ns: str | None, ip: str, port: int, timeout: float = 2.0) -> str:
    """One datagram from ``ns`` to ``ip:port`` (resent a few times): ``ok <source seen>``..."""
    sock = ns_socket(ns, socket.SOCK_DGRAM, ip)
    deadline = time.monotonic() + timeout
    try:
        sock.connect((ip, port))
        while True:
            sock.send(b"ping")
            sock.settimeout(min(0.5, max(0.01, deadline - time.monotonic())))
            try:
                return f"ok {_source(sock.recv(4096))}"
            except TimeoutError:
                if time.monotonic() >= deadline:
                    return "timeout"
    except OSError as exc:
        return _failure(exc)
    finally:
        sock.close()


def probe(ns: str | None, ip: str, port: int, proto: str = "tcp", timeout: float = 2.0) -> str:
    """A TCP or UDP probe; a timeout is tried once more, so a busy host is not a closed path."""
    check = probe_tcp if proto == "tcp" else probe_udp
    result = check(ns, ip, port, timeout)
    if result == "timeout":
        result = check(ns, ip, port, timeout)
    return result


def at_once(probes: dict[str, Callable[[], str]]) -> dict[str, str]:
    """Every probe started together, results by name: a blocked path waits out its timeout,
    twice (``probe``), and a scenario's probes do not wait for each other's."""
    with ThreadPoolExecutor(max_workers=max(1, len(probes))) as pool:
        started = {what: pool.submit(one) for what, one in probes.items()}
    return {what: done.result() for what, done in started.items()}


class PeerServer:
    """Answers every TCP connection or UDP datagram on ``ip:port`` in ``ns`` with its source."""

    def __init__(self, ns: str | None, ip: str, port: int, proto: str = "tcp") -> None:
        self.proto = proto
        self._stop = threading.Event()
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        self._sock = ns_socket(ns, kind, ip)
        try:
            self._sock.bind((ip, port))
            if proto == "tcp":
                self._sock.listen(64)
        except OSError:
            self._sock.close()
            raise
        self._sock.settimeout(0.2)
        serve = self._serve_tcp if proto == "tcp" else self._serve_udp
        self._thread = threading.Thread(target=serve, name=f"peer-{proto}-{port}", daemon=True)
        self._thread.start()

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn, peer[0]), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket, peer: str) -> None:
        with conn:
            conn.settimeout(2)
            try:
                conn.recv(4096)  # read the request so closing sends FIN, not RST
                conn.sendall(f"{peer}\n".encode())
            except OSError:
                pass

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                _, peer = self._sock.recvfrom(4096)
                self._sock.sendto(f"{peer[0]}\n".encode(), peer)
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        """Stop serving and release the socket (it pins its namespace while open)."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


class Outside:
    """A host outside Docker's world: a namespace joined to the host by a veth pair.

    The namespace routes the test subnet pools (IPv4 and IPv6) via the host end, like a
    machine on the LAN whose router is this host; the host already forwards IPv4 (dockerd set
    ``ip_forward``), IPv6 where a test turned it on.
    """

    def __init__(self, subnet: ipaddress.IPv4Network, pool: ipaddress.IPv4Network,
                 subnet_v6: ipaddress.IPv6Network, pool_v6: ipaddress.IPv6Network) -> None:
        tag = secrets.token_hex(3)
        self.name = f"pt-out-{tag}"
        self.host_end = f"pto{tag}"
        self.ns_end = f"pti{tag}"
        self.subnet = subnet
        self.pool = pool
        self.host_ip = str(subnet[1])  # "the host's address" for every probe
        self.ip = str(subnet[2])
        self.subnet_v6, self.pool_v6 = subnet_v6, pool_v6
        self.host_ip6 = str(subnet_v6[1])
        self.ip6 = str(subnet_v6[2])

    @property
    def ns(self) -> str:
        return f"/run/netns/{self.name}"

    def create(self) -> None:
        """Build the namespace, the veth pair, addresses and the route to the containers."""
        prefix = self.subnet.prefixlen
        run(["ip", "netns", "add", self.name])
        run(["ip", "link", "add", self.host_end, "type", "veth", "peer", "name", self.ns_end,
             "netns", self.name])
        run(["ip", "addr", "add", f"{self.host_ip}/{prefix}", "dev", self.host_end])
        run(["ip", "link", "set", self.host_end, "up"])
        run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        run(["ip", "-n", self.name, "addr", "add", f"{self.ip}/{prefix}", "dev", self.ns_end])
        run(["ip", "-n", self.name, "link", "set", self.ns_end, "up"])
        run(["ip", "-n", self.name, "route", "add", str(self.pool), "via", self.host_ip])
        prefix6 = self.subnet_v6.prefixlen
        run(["ip", "addr", "add", f"{self.host_ip6}/{prefix6}", "dev", self.host_end, "nodad"])
        run(["ip", "-n", self.name, "addr", "add", f"{self.ip6}/{prefix6}", "dev", self.ns_end,
             "nodad"])
        run(["ip", "-n", self.name, "route", "add", str(self.pool_v6), "via", self.host_ip6])

    def destroy(self) -> None:
        """Remove the veth pair and the namespace; safe on a half-built one."""
        run(["ip", "link", "del", self.host_end], check=False)
        run(["ip", "netns", "del", self.name], check=False)


def container_ns(pid: int) -> str:
    """The network namespace of a container's process."""
    return f"/proc/{pid}/ns/net"


ETH_P_IP = 0x0800


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _syn_frame(src_mac: bytes, dst_mac: bytes, src: str, dst: str, sport: int,
               dport: int) -> bytes:
    """An Ethernet frame holding one TCP SYN from ``src:sport`` to ``dst:dport``."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, secrets.randbits(32), 0, 5 << 4, 0x02,
                      64240, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", _checksum(s + d + struct.pack("!BBH", 0, 6, len(tcp))
                                                 + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), secrets.randbits(16), 0, 64, 6,
                     0, s, d)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return dst_mac + src_mac + struct.pack("!H", ETH_P_IP) + ip + tcp


def raw_syn(ns: str | None, ifname: str, dst_mac: str, src: str, dst: str, port: int,
            timeout: float = 2.0) -> str:
    """What an attacker with NET_RAW (every default container has it) can do whatever its
    routes say: send a TCP SYN for ``dst:port`` as a frame to ``dst_mac`` out of ``ifname``.
    ``answered`` if any TCP segment comes back (SYN-ACK or RST: the target's stack saw it),
    else ``timeout``."""
    with in_netns(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    try:
        sock.bind((ifname, ETH_P_IP))
        src_mac = sock.getsockname()[4]
        sport = 40000 + secrets.randbelow(20000)
        sock.send(_syn_frame(src_mac, bytes.fromhex(dst_mac.replace(":", "")), src, dst,
                             sport, port))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                frame = sock.recv(2048)
            except TimeoutError:
                break
            ip = frame[14:]
            if len(ip) < 40 or ip[9] != 6 or ip[12:16] != socket.inet_aton(dst):
                continue
            tcp = ip[(ip[0] & 0x0F) * 4:]
            if struct.unpack("!HH", tcp[:4]) == (port, sport):
                return "answered"
        return "timeout"
    finally:
        sock.close()
