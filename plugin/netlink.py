"""Bridges, veth pairs and addresses through netlink, as idempotent ensure steps (pyroute2,
but for link writes: see Netlink._write_link).

Each function makes the kernel match one fact and treats "already there" (EEXIST) and "already
gone" (ENODEV) as success, so a retried call from dockerd and the reconciler can run them again
safely. Links pynet creates carry an alias ``pynet:<instance>:<id>`` that marks them as pynet's
own, so clean-up never touches a bridge the user made or another instance's links.
"""

import errno
import fcntl
import ipaddress
import logging
import os
import secrets
import socket
import struct
import threading
from collections.abc import Container, Iterator
from dataclasses import dataclass
from types import SimpleNamespace

from pyroute2 import Conntrack, IPRoute
from pyroute2.conntrack import NFCTAttrTuple
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWADDR, RTM_NEWLINK
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netns import create_socket

from plugin.errors import Conflict, KernelError

log = logging.getLogger(__name__)

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class Link:
    """What pynet needs to know about an existing link."""

    index: int
    name: str
    kind: str
    mtu: int
    alias: str
    master: int
    up: bool


# Attribute numbers (linux/if_link.h, linux/veth.h, linux/if_addr.h) of the few values pynet
# reads or writes.
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_TXQLEN = 1, 3, 4, 10, 13
IFLA_LINKINFO, IFLA_IFALIAS = 18, 20
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
VETH_INFO_PEER, IFLA_BRPORT_MODE = 1, 4
NLA_F_NESTED = 0x8000
IFF_UP = 0x1
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10  # the option: error answers leave the request out
_NLMSGHDR = struct.Struct("=LHHLL")  # length, type, flags, sequence number, port id
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFA_ADDRESS = 1
IFA_F_NODAD = 0x02  # ifaddrmsg flag: skip duplicate address detection
SIOCGIFINDEX = 0x8933  # <linux/sockios.h>: an interface's index by name
_IFREQ = struct.Struct("16si20x")  # struct ifreq: the name, then ifr_ifindex in the union
_NLA_TYPE_MASK = 0x3FFF  # without the nested / byte-order flag bits
# Where the attributes start in a message: after nlmsghdr (16 bytes) and ifinfomsg / ifaddrmsg.
_LINK_ATTRS_AT, _ADDRESS_ATTRS_AT = 16 + 16, 16 + 8
# rtnetlink multicast groups (linux/rtnetlink.h): links, IPv4 and IPv6 addresses.
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100


def _attributes(data: bytes, start: int, end: int, wanted: set[int]) -> dict[int, bytes]:
    """The payloads of the ``wanted`` attributes in the netlink attribute chain data[start:end]."""
    found: dict[int, bytes] = {}
    end = min(end, len(data))
    while start + 4 <= end:
        length, kind = struct.unpack_from("HH", data, start)
        if length < 4 or start + length > end:
            break  # malformed or cut short: what came before is all there is
        if kind & _NLA_TYPE_MASK in wanted:
            found.setdefault(kind & _NLA_TYPE_MASK, bytes(data[start + 4:start + length]))
        start += (length + 3) & ~3
    return found


def _attribute(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded (what _attributes reads)."""
    return struct.pack("HH", 4 + len(payload), kind) + payload + bytes(-len(payload) % 4)


def _nested(kind: int, *children: bytes) -> bytes:
    return _attribute(kind | NLA_F_NESTED, b"".join(children))


def _string(kind: int, text: str) -> bytes:
    return _attribute(kind, text.encode() + b"\0")


def _u32_attribute(kind: int, value: int) -> bytes:
    return _attribute(kind, struct.pack("I", value))


def _link_attributes(name: str, mac: str | None = None, mtu: int = 0) -> bytes:
    """A link's name, and its MAC and MTU where given (0: the kernel's default)."""
    return (_string(IFLA_IFNAME, name)
            + (_attribute(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", ""))) if mac else b"")
            + (_u32_attribute(IFLA_MTU, mtu) if mtu else b""))


# A bridge port's hairpin mode, as the port attribute of a link request (what `ip link set
# DEV type bridge_slave hairpin on` sends), so it can ride along with other link settings.
# The kernel reads port attributes in RTM_NEWLINK only (RTM_SETLINK ignores them).
HAIRPIN = _nested(IFLA_LINKINFO, _string(IFLA_INFO_SLAVE_KIND, "bridge"),
                  _nested(IFLA_INFO_SLAVE_DATA, _attribute(IFLA_BRPORT_MODE, b"\1")))


def _text(payload: bytes | None) -> str:
    return payload.split(b"\0", 1)[0].decode(errors="replace") if payload else ""


def _u32(payload: bytes | None) -> int:
    return struct.unpack("I", payload[:4])[0] if payload and len(payload) >= 4 else 0


class _LinkMessage(ifinfmsg):
    """An RTM_NEWLINK reply read only as far as ``Link`` needs (``.link``).

    pyroute2 makes an object per attribute (about 40 per link, 26 KiB per link in all). The
    periodic check reads every link on the host, and at a few hundred links those short-lived
    objects left Python's allocator holding memory it never returned; reading five values
    straight from the reply is also ~4x faster. pyroute2 still decodes the headers (its
    documented way to customise a message: override decode, call the parent's)."""

    nla_map = ()  # pyroute2 decodes no attributes; decode() picks its five

    def decode(self) -> None:
        super().decode()
        attrs = _attributes(self.data, self.offset + _LINK_ATTRS_AT,
                            self.offset + self["header"]["length"],
                            {IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_IFALIAS})
        info = attrs.get(IFLA_LINKINFO, b"")
        kind = _attributes(info, 0, len(info), {IFLA_INFO_KIND}).get(IFLA_INFO_KIND)
        self.link = Link(index=self["index"], name=_text(attrs.get(IFLA_IFNAME)),
                         kind=_text(kind), mtu=_u32(attrs.get(IFLA_MTU)),
                         alias=_text(attrs.get(IFLA_IFALIAS)),
                         master=_u32(attrs.get(IFLA_MASTER)), up=bool(self["flags"] & 1))


class _AddressMessage(ifaddrmsg):
    """An RTM_NEWADDR reply read only for its link index and address (``.address``), for the
    same reason as ``_LinkMessage``."""

    nla_map = ()

    def decode(self) -> None:
        super().decode()
        raw = _attributes(self.data, self.offset + _ADDRESS_ATTRS_AT,
                          self.offset + self["header"]["length"],
                          {IFA_ADDRESS}).get(IFA_ADDRESS)
        self.address: Interface | None = None
        if raw is not None and len(raw) in (4, 16):
            self.address = ipaddress.ip_interface((ipaddress.ip_address(raw), self["prefixlen"]))


class LinkEvents:
    """A socket the kernel writes to whenever a link or an address in the namespace changes
    (created, deleted, moved to another namespace, set up or down, given another MTU or
    master). The messages themselves are not read, only whether any came: the periodic check
    uses it to skip dumping every link and address when nothing changed (reconcile.Looks)."""

    GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR

    def __init__(self, netns: str | None = None) -> None:
        self._sock = create_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW,
                                   socket.NETLINK_ROUTE)
        try:
            self._sock.setblocking(False)
            self._sock.bind((0, self.GROUPS))
        except OSError:
            self._sock.close()
            raise
        self._buffer = bytearray(65536)  # messages are not read: a longer one is cut short

    def changed(self) -> bool:
        """Whether anything changed since the previous call (or since the socket was made);
        reads what is queued. A queue that overflowed (ENOBUFS: the kernel dropped messages)
        counts as a change, and so does any other error: the caller then looks, as it would
        without this socket."""
        seen = False
        while True:
            try:
                self._sock.recv_into(self._buffer)
            except BlockingIOError:
                return seen
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    log.warning("reading link events: %s; looking anyway", exc)
                    return True
            seen = True

    def close(self) -> None:
        """Release the socket."""
        self._sock.close()


def random_local_mac() -> str:
    """A locally administered MAC with Docker's 02:42 prefix, as the bridge driver gives bridges."""
    return "02:42:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(4))


def mac_from_ipv4(address: ipaddress.IPv4Address) -> str:
    """Docker 20.10's endpoint MAC: 02:42 followed by the four address bytes."""
    return "02:42:" + ":".join(f"{b:02x}" for b in address.packed)


class Netlink:
    """One rtnetlink socket; calls are serialised because a pyroute2 socket is not thread-safe."""

    # pyroute2 0.9 leaves one unread message per request in an internal queue (about 1 KiB
    # a call, measured); a long-running plugin reopens its socket before that adds up.
    REOPEN_AFTER_CALLS = 500

    def __init__(self, netns: str | None = None) -> None:
        # ``netns`` lets kernel tests work in a throwaway namespace; the plugin uses the host's.
        self._netns = netns
        self._ipr = self._open()
        # For index lookups by ioctl (_index): a socket of the namespace this one serves.
        self._ioctl = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if netns is None else None
        self._calls = 0
        self._lock = threading.Lock()
        # Link writes (_write_link) go out on a socket of their own: pyroute2's IPRoute runs
        # an event loop around each request, which took longer than the kernel's work on the
        # requests of docker run's path (a veth pair and its settings).
        self._writer = create_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW,
                                     socket.NETLINK_ROUTE)
        self._writer.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self._writer.bind((0, 0))
        self._sequence = 0

    def sibling(self) -> "Netlink":
        """Another socket on the same namespace: deleting a link blocks its socket for as long
        as the kernel takes, which must not hold up creates on this one."""
        return Netlink(self._netns)

    def events(self) -> LinkEvents:
        """A socket told of every link and address change in this namespace from now on."""
        return LinkEvents(self._netns)

    def _open(self) -> IPRoute:
        # groups=0: no multicast subscription; this socket asks (LinkEvents listens).
        ipr = IPRoute(netns=self._netns, groups=0) if self._netns else IPRoute(groups=0)
        ipr.register_policy({RTM_NEWLINK: _LinkMessage, RTM_NEWADDR: _AddressMessage})
        # pyroute2 keeps its socket, event loop and message queue per thread: a thread other
        # than this one gets a socket of its own, and an event loop built and torn down
        # around each of its calls (most of a call's time for a small request). Every call
        # here holds self._lock, so all threads share this thread's.
        ipr.asyncore.local = SimpleNamespace(**vars(ipr.asyncore.local))
        return ipr

    def close(self) -> None:
        """Release the sockets."""
        self._ipr.close()
        self._writer.close()
        if self._ioctl is not None:
            self._ioctl.close()

    def _call(self, what: str, method: str, *args: object, tolerate: tuple[int, ...] = (),
              **kwargs: object) -> object:
        with self._lock:
            self._calls += 1
            if self._calls > self.REOPEN_AFTER_CALLS:
                self._ipr.close()
                self._ipr = self._open()
                self._calls = 0
            try:
                return getattr(self._ipr, method)(*args, **kwargs)
            except NetlinkError as exc:
                if exc.code in tolerate:
                    return None
                raise KernelError(f"{what}: {errno.errorcode.get(exc.code, exc.code)} "
                                  f"({exc})") from exc

    def _write_link(self, what: str, attributes: bytes, up: bool = False,
                    create: bool = False, tolerate: tuple[int, ...] = ()) -> bool:
        """Send one RTM_NEWLINK request (``create``: of a new link, else of the one the
        IFLA_IFNAME in ``attributes`` names) and wait for the kernel's answer; False if it
        refused with an error in ``tolerate``. ``up`` raises the link. The request is
        encoded here, as the replies are decoded (_LinkMessage): pyroute2's encoder took
        longer than the kernel's work on the small requests of docker run's path."""
        flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE | NLM_F_EXCL if create else 0)
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, IFF_UP if up else 0,
                               IFF_UP if up else 0) + attributes
        with self._lock:
            self._sequence = self._sequence % 0xFFFFFFFF + 1
            self._writer.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_NEWLINK, flags,
                                             self._sequence, 0) + body)
            code = self._answer(self._sequence)
        if code == 0 or code in tolerate:
            return code == 0
        raise KernelError(f"{what}: {errno.errorcode.get(code, code)} ({os.strerror(code)})")

    def _answer(self, sequence: int) -> int:
        """The error number the kernel answered request ``sequence`` with (0: done). Answers
        to earlier requests (one whose sender gave up, say) are skipped."""
        while True:
            data = self._writer.recv(65536)
            at = 0
            while at + _NLMSGHDR.size + 4 <= len(data):
                length, kind, _flags, seq, _port = _NLMSGHDR.unpack_from(data, at)
                if kind == NLMSG_ERROR and seq == sequence:
                    return -struct.unpack_from("=i", data, at + _NLMSGHDR.size)[0]
                if length < _NLMSGHDR.size:
                    break  # malformed: read the next datagram
                at += (length + 3) & ~3

    def get(self, name: str) -> Link | None:
        """The link called ``name``, or None."""
        if self._ioctl is not None and self._index(name) is None:
            return None  # absent: known without waiting for the rtnl lock (see _index)
        msgs = self._call(f"reading link {name}", "link", "get", ifname=name,
                          tolerate=(errno.ENODEV,))
        return msgs[0].link if msgs else None

    @staticmethod
    def routes_v4(overlapping: ipaddress.IPv4Network | None = None,
                  skip: Container[str] = ()) -> list[tuple[ipaddress.IPv4Network, str]]:
        """The main table's IPv4 routes as (destination, interface name), from procfs; with
        ``overlapping``, only those whose destination overlaps it; none of the interfaces
        in ``skip``.

        CreateNetwork checks a new pool against them; a netlink dump through pyroute2 costs a
        few milliseconds even for a handful of routes (and grows with every bridge), the
        kernel's text table a fraction of one, and skipping pynet's own bridges by name and
        comparing integers before making address objects keeps it so with a thousand
        bridges. ``thread-self``: the calling thread's namespace (kernel tests run their
        driver in a throwaway one)."""
        found = []
        with open("/proc/thread-self/net/route") as table:
            next(table)  # the header line
            for line in table:
                if line.partition("\t")[0] in skip:
                    continue
                iface, dst, _gateway, _flags, _ref, _use, _metric, mask = line.split()[:8]
                packed = struct.pack("=I", int(dst, 16))  # the table prints host byte order
                prefix = int(mask, 16).bit_count()
                if overlapping is not None:
                    shift = 32 - min(prefix, overlapping.prefixlen)
                    ours = int(overlapping.network_address) >> shift if shift < 32 else 0
                    if shift < 32 and int.from_bytes(packed, "big") >> shift != ours:
                        continue
                network = ipaddress.IPv4Address(packed)
                found.append((ipaddress.IPv4Network((network, prefix), strict=False), iface))
        return found

    @staticmethod
    def routes_v6(overlapping: ipaddress.IPv6Network, skip: Container[str] = ()
                  ) -> list[tuple[ipaddress.IPv6Network, str]]:
        """The IPv6 routes (every table: procfs lists them together) whose destination
        overlaps ``overlapping``, as (destination, interface name), but none of the
        interfaces in ``skip``; none where the kernel has no IPv6. Local and multicast routes
        (of interface ``lo``, or ff00::/8) are no conflict and are left out."""
        try:
            table = open("/proc/thread-self/net/ipv6_route")
        except FileNotFoundError:
            return []
        found = []
        with table:
            for line in table:
                dst, prefix_hex, *_rest, iface = line.split()
                route = ipaddress.IPv6Network((int(dst, 16), int(prefix_hex, 16)))
                if iface != "lo" and iface not in skip and not route.is_multicast \
                        and route.overlaps(overlapping):
                    found.append((route, iface))
        return found

    def links(self) -> Iterator[Link]:
        """Every link in this namespace."""
        for msg in self._call("listing links", "get_links"):
            yield msg.link

    def ensure_bridge(self, name: str, alias: str | None) -> bool:
        """Create bridge ``name`` if missing and bring it up; True if pynet created it now.

        ``alias`` None means the bridge is the user's: it is used as it is, never marked."""
        # On docker network create's path: one request creates and raises the bridge (EEXIST
        # means it is there already), and what was just created is not read back.
        created = self._write_link(
            f"creating bridge {name}",
            _link_attributes(name, random_local_mac())
            + _nested(IFLA_LINKINFO, _string(IFLA_INFO_KIND, "bridge")),
            up=True, create=True, tolerate=(errno.EEXIST,))
        if created:
            if alias is not None:
                self._write_link(f"marking bridge {name}",
                                 _string(IFLA_IFNAME, name) + _string(IFLA_IFALIAS, alias))
            return True
        existing = self._require(name)
        if existing.kind != "bridge":
            raise Conflict(f"interface {name} exists and is a {existing.kind or 'device'}, not a "
                           "bridge; choose another com.docker.network.bridge.name")
        mark = _string(IFLA_IFALIAS, alias) if alias is not None and existing.alias != alias \
            else b""
        if mark or not existing.up:
            self._write_link(f"configuring bridge {name}", _string(IFLA_IFNAME, name) + mark,
                             up=True)
        return False

    def ensure_address(self, name: str, address: Interface) -> None:
        """Put ``address`` on link ``name`` if it is not there. An IPv6 address skips
        duplicate address detection: it is the network's gateway, which dockerd's IPAM gave
        no one else, and while DAD runs the host could neither use it as a source nor
        answer for it (containers' first packets to their gateway would be lost)."""
        index = self._index(name)
        if index is None:
            raise KernelError(f"link {name} does not exist")
        self._call(f"adding {address} to {name}", "addr", "add", index=index,
                   address=str(address.ip), prefixlen=address.network.prefixlen,
                   flags=IFA_F_NODAD if address.version == 6 else 0,
                   tolerate=(errno.EEXIST,))

    def remove_address(self, name: str, address: Interface) -> None:
        """Take ``address`` off link ``name``; a missing link or address is fine."""
        link = self.get(name)
        if link is None:
            return
        self._call(f"removing {address} from {name}", "addr", "del", index=link.index,
                   address=str(address.ip), prefixlen=address.network.prefixlen,
                   tolerate=(errno.EADDRNOTAVAIL, errno.ENODEV, errno.ESRCH))

    def all_addresses(self) -> dict[int, set[Interface]]:
        """Every address in the namespace by link index: one dump, however many links."""
        found: dict[int, set[Interface]] = {}
        for m in self._call("reading addresses", "get_addr"):
            if m.address is not None:
                found.setdefault(m["index"], set()).add(m.address)
        return found

    def addresses(self, name: str) -> set[Interface]:
        """The addresses on link ``name`` (empty if it does not exist)."""
        link = self.get(name)
        if link is None:
            return set()
        msgs = self._call(f"reading addresses of {name}", "get_addr", index=link.index)
        return {m.address for m in msgs if m.address is not None}

    def ensure_veth(self, host: str, peer: str, bridge: str, mtu: int, mac: str,
                    alias: str, hairpin: bool) -> None:
        """A veth pair: ``host`` enslaved to ``bridge`` and up, ``peer`` left for dockerd to move
        into the container with ``mac``; both ends get ``mtu`` when it is non-zero. ``hairpin``
        lets frames leave the bridge port they came in on (published-port hairpin)."""
        bridge_index = self._index(bridge)
        if bridge_index is None:
            raise KernelError(f"link {bridge} does not exist")
        # This is on docker run's path: one request creates, enslaves and raises the pair
        # (EEXIST: a retry finds it made), the rest addresses it by name, nothing is read back.
        created = self._write_link(
            f"creating veth pair {host}/{peer}",
            _link_attributes(host, mtu=mtu) + _u32_attribute(IFLA_TXQLEN, 0)
            + _u32_attribute(IFLA_MASTER, bridge_index)
            + _nested(IFLA_LINKINFO, _string(IFLA_INFO_KIND, "veth"), _nested(
                IFLA_INFO_DATA, _attribute(VETH_INFO_PEER, _IFINFOMSG.pack(0, 0, 0, 0, 0)
                                           + _link_attributes(peer, mac, mtu)))),
            up=True, create=True, tolerate=(errno.EEXIST,))
        port = HAIRPIN if hairpin else b""
        name = _string(IFLA_IFNAME, host)
        if created:  # the alias and the bridge port's hairpin mode in one more request
            self._write_link(f"configuring veth {host}",
                             name + _string(IFLA_IFALIAS, alias) + port)
            return
        existing = self._require(host)
        if existing.kind != "veth":
            raise Conflict(f"interface {host} exists and is a {existing.kind or 'device'}, "
                           "not a veth; remove it")
        settings = b""
        if existing.alias != alias:
            settings += _string(IFLA_IFALIAS, alias)
        if existing.master != bridge_index:
            settings += _u32_attribute(IFLA_MASTER, bridge_index)
        if mtu and existing.mtu != mtu:
            settings += _u32_attribute(IFLA_MTU, mtu)
        if settings or not existing.up:
            self._write_link(f"configuring veth {host}", name + settings, up=True)
        if port:  # a request of its own: the kernel reads it as a port of the old master
            self._write_link(f"setting hairpin on {host}", name + port)

    def _index(self, name: str) -> int | None:
        """The index of link ``name``, or None.

        On the namespace the socket was opened in this asks the kernel by ioctl
        (SIOCGIFINDEX, on a socket opened beside the netlink one), which reads under RCU: a
        netlink request waits for the rtnl lock, which every link being deleted holds a while
        (the reaper's, dockerd's), and then pyroute2 decodes the whole link. Only ENODEV
        means "no such link": any other failure is an error, never taken for absence (a
        user's bridge must not look missing). A socket opened in another namespace (kernel
        tests) asks over netlink."""
        if self._ioctl is not None:
            raw = name.encode()
            if len(raw) >= 16 or b"\0" in raw:
                return None  # no link can have that name
            try:
                reply = fcntl.ioctl(self._ioctl.fileno(), SIOCGIFINDEX, _IFREQ.pack(raw, 0))
            except OSError as exc:
                if exc.errno == errno.ENODEV:
                    return None
                raise KernelError(f"reading the index of link {name}: "
                                  f"{errno.errorcode.get(exc.errno or 0, exc.errno)} ({exc})"
                                  ) from exc
            return int(_IFREQ.unpack(reply)[1])
        link = self.get(name)
        return link.index if link else None

    def flush_conntrack(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
        """Forget tracked connections to or from ``address`` so a later container that gets
        the same address does not inherit their NAT state; returns how many were dropped.

        For IPv4 the kernel filters the dumps (orig source, orig destination, reply source:
        the last catches DNATed connections to a published port), so pynet decodes only the
        address's entries, not the host's whole table, which held the GIL long on busy hosts.
        pyroute2's filter matches no IPv6 entry (measured), so IPv6 dumps the family's table
        once and picks the address's entries."""
        dropped = 0
        if self._netns:
            return 0  # conntrack tables are per namespace; tests in a throwaway one have none
        text = str(address)
        if address.version == 4:
            dumps = [{where: NFCTAttrTuple(**match)}
                     for where, match in (("tuple_orig", {"saddr": text}),
                                          ("tuple_orig", {"daddr": text}),
                                          ("tuple_reply", {"saddr": text}))]
        else:
            dumps = [{}]
        seen: set[int] = set()
        # its own socket (the rtnetlink lock is not needed), of the address's family
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        with Conntrack(nfgen_family=family) as ct:
            for dump in dumps:
                for entry in list(ct.dump_entries(**dump)):
                    if entry.id in seen or not dump and text not in (
                            entry.tuple_orig.saddr, entry.tuple_orig.daddr,
                            entry.tuple_reply.saddr):
                        continue
                    seen.add(entry.id)
                    try:
                        ct.delete(entry)
                        dropped += 1
                    except NetlinkError as exc:
                        if exc.code != errno.ENOENT:
                            raise KernelError(f"deleting conntrack entry of {address}: "
                                              f"{exc}") from exc
        return dropped

    def delete(self, name: str) -> bool:
        """Delete link ``name`` (a veth takes its peer with it); True if it existed."""
        return self._call(f"deleting link {name}", "link", "del", ifname=name,
                          tolerate=(errno.ENODEV,)) is not None

    def _require(self, name: str) -> Link:
        link = self.get(name)
        if link is None:
            raise KernelError(f"link {name} does not exist")
        return link

