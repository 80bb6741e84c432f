"""The decisions: what a network or endpoint needs, in which order, and how to undo it.

Every mutating call follows one pattern: validate (protocol.py did most of it), write the record
in state ``creating``/``deleting``, run idempotent kernel steps, then mark it ``ready`` or forget
it. A failure rolls the kernel back before the error reaches dockerd, so a refused request
leaves nothing behind; a crash leaves a record that tells reconcile.py what to finish.

Deletes are answered once their records say ``deleting``; the reaper thread then removes the
rules, links and records. The kernel needs 20-40 ms to unregister a bridge or veth and ~15 ms for
any nft rule deletion, which would otherwise sit on every ``docker rm`` and ``network rm``.
Creates that could collide with an unfinished delete (a bridge name or subnet) finish it first.
"""

import ipaddress
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from plugin import protocol
from plugin.config import Settings
from plugin.errors import Busy, InvalidRequest, KernelError, NotFound
from plugin.faults import checkpoint
from plugin.firewall.iptables import Dump, IPTables
from plugin.firewall.rules import (
    DOCKER_ISOLATION_2,
    Chains,
    NetworkSpec,
    PortSpec,
    RuleSet,
    docker_layout,
    render,
)
from plugin.netlink import Netlink, mac_from_ipv4
from plugin.options import GATEWAY_MODE_IPV4, GATEWAY_MODE_IPV6, NetworkOptions
from plugin.ports import ANY, PortReservations
from plugin.store import DELETING, READY, EndpointRecord, NetworkRecord, PortRecord, Store
from plugin.sysctl import Sysctl

log = logging.getLogger(__name__)

DEFAULT_GATEWAY_AUX = "DefaultGatewayIPv4"
DOCKER_IPAM_SPACE = "LocalDefault"  # the address space of dockerd's built-in IPAM


@dataclass(frozen=True)
class Joined:
    """What Join tells dockerd: which interface to move in, and the container's gateways."""

    src_name: str
    dst_prefix: str
    gateway: str | None
    gateway_v6: str | None


def gateway_skips(options: NetworkOptions) -> tuple[bool, bool]:
    """Whether dockerd should leave the IPv4 and IPv6 gateway address unallocated: as the
    bridge driver, for an internal network whose bridge gets no IPv4 address (inhibit_ipv4)."""
    return options.internal and options.inhibit_ipv4, False


class Epoch:
    """Odd while a call runs, and changed by every call (see Driver.epoch). Calls advance it
    under the driver lock, a delete deferred for want of that lock without it: the counter has
    a lock of its own, or one of two concurrent updates could be lost and leave it odd."""

    def __init__(self) -> None:
        self._value = 0
        self._lock = threading.Lock()

    @property
    def value(self) -> int:
        return self._value

    def advance(self, steps: int) -> None:
        with self._lock:
            self._value += steps


_PARSED: dict[str, protocol.CreateNetwork] = {}


def parse_network(record: NetworkRecord) -> protocol.CreateNetwork:
    """The stored CreateNetwork request, parsed again (records keep the request verbatim).

    Every firewall render reads every network, so parses are kept: a network id is never
    reused, and its request never changes.
    """
    parsed = _PARSED.get(record.id)
    if parsed is None:
        parsed = _PARSED[record.id] = protocol.CreateNetwork.parse(record.request)
    return parsed


class Driver:
    """Networks and endpoints of one pynet instance."""

    def __init__(self, settings: Settings, store: Store, netlink: Netlink, sysctl: Sysctl,
                 iptables: IPTables, ports: PortReservations) -> None:
        self.settings = settings
        self.store = store
        self.netlink = netlink
        self.sysctl = sysctl
        self.iptables = iptables
        self.ports = ports
        self.chains = Chains(settings.chain_prefix)
        self.ready = threading.Event()
        self._lock = threading.RLock()
        self._deleter = netlink.sibling()
        self._reap_lock = threading.Lock()
        # Kernel work a call can overlap with its own (CreateNetwork's iptables-restore).
        self._side = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="side")
        self._wake_reaper = threading.Event()
        self._unflushed: queue.SimpleQueue[ipaddress.IPv4Address] = queue.SimpleQueue()
        # Container addresses whose port rules the reaper has not removed yet (with a serial
        # number per unpublish): a new endpoint given such an address removes them first.
        self._unpublished: dict[str, int] = {}
        self._serial = itertools.count()
        self._epoch = Epoch()
        self._confirmed: set[str] = set()  # networks dockerd named since this server started
        self.layout = ""  # dockerd's firewall layout, as the last render found it
        threading.Thread(target=self._reaper, name="reaper", daemon=True).start()

    @property
    def epoch(self) -> int:
        """Odd while a call runs, and changed by every call: the periodic check, which reads
        the kernel without the lock, trusts a difference only if no call ran meanwhile."""
        return self._epoch.value

    @contextmanager
    def locked(self) -> Iterator[None]:
        """For calls: wait until state is restored, then hold the lock."""
        deadline = self.settings.call_deadline
        if not self.ready.wait(deadline):
            raise Busy(f"pynet is still restoring its networks after {deadline:.0f}s; retry")
        with self.exclusive():
            self._epoch.advance(1)
            try:
                yield
            finally:
                self._epoch.advance(1)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Serialise state and kernel work; give up with a clear error instead of hanging."""
        deadline = self.settings.call_deadline
        if not self._lock.acquire(timeout=deadline):
            raise Busy(f"pynet is busy: another call held it for over {deadline:.0f}s; retry")
        try:
            yield
        finally:
            self._lock.release()

    # -- names ---------------------------------------------------------------------------

    def alias(self, object_id: str) -> str:
        """The alias that marks a link as this instance's."""
        return f"{self.settings.alias_prefix}{object_id}"

    @staticmethod
    def veth_names(endpoint_id: str) -> tuple[str, str]:
        """Host and container ends, derived from the id so retries find what they made."""
        return f"pnh{endpoint_id[:12]}", f"pnc{endpoint_id[:12]}"

    # -- networks ------------------------------------------------------------------------

    def create_network(self, req: protocol.CreateNetwork) -> None:
        """Build the bridge, its addresses and its rules, or nothing at all."""
        bridge = req.options.bridge_name or f"pn-{req.network_id[:12]}"
        record = self.store.network(req.network_id)
        if record is None:
            self._check_supported(req, bridge)
        if record is not None and record.state == READY:
            return  # dockerd retried a call that succeeded
        if record is None:
            networks = self.store.networks()
            dropped = self._drop_superseded(req, networks)
            if dropped or any(n.state == DELETING and (n.bridge == bridge or parse_network(n)
                                                       .ipv4.pool.overlaps(req.ipv4.pool))
                              for n in networks):
                self.reap()  # the bridge name or subnet asked for is still being let go
            link = self.netlink.get(bridge)
            if link is not None and link.kind != "bridge":
                raise InvalidRequest(f"interface {bridge} exists and is a {link.kind or 'device'}"
                                     ", not a bridge; choose another "
                                     "com.docker.network.bridge.name")
            mine = link is not None and link.alias.startswith(self.settings.alias_prefix)
            record = NetworkRecord(id=req.network_id, bridge=bridge, request=req.body,
                                   preexisting=link is not None and not mine,
                                   confirmed=time.time())
            self._confirmed.add(record.id)
            self.store.put_network(record)  # refuses a bridge another network holds
            checkpoint("create_network.recorded")
        try:
            # The rules name the bridge, they do not need it: iptables-restore runs while the
            # bridge is built. Only additions: rules of networks and ports being deleted are
            # the reaper's to remove (a `docker network create` right after an rm would
            # otherwise pay for the deletions). They cannot touch this network: a pending
            # delete with its bridge name or an overlapping subnet was finished above.
            rules = self._side.submit(self.sync_firewall, keep=True)
            try:
                self.build_network(record, req)
                checkpoint("create_network.bridge_built")
            finally:
                futures.wait([rules])
            rules.result()
            checkpoint("create_network.rules_applied")
        except Exception:
            self._roll_back(self.teardown_network, record)
            raise
        record.state = READY
        self.store.put_network(record)

    def _check_supported(self, req: protocol.CreateNetwork, bridge: str) -> None:
        """Refuse networks pynet cannot build as safely as the bridge driver would."""
        req.check_host_safety()
        self._check_host_routes(req.ipv4.pool, bridge)
        for key, mode in ((GATEWAY_MODE_IPV4, req.options.gateway_mode_ipv4),
                          (GATEWAY_MODE_IPV6, req.options.gateway_mode_ipv6)):
            if mode != "nat":  # NAT with the direct-routing protection, Docker's default
                raise InvalidRequest(f"{key}={mode} is not supported by pynet yet (it builds "
                                     "nat only); leave the option out or use -d bridge for "
                                     "this network")
        if req.ipv6 is not None:
            raise InvalidRequest(
                "IPv6 networks are not supported by pynet yet: it has no IPv6 firewall, so "
                "the network's containers would be open to every other network over IPv6; "
                "create the network without --ipv6")
        forwarding = self.sysctl.read("net/ipv4/ip_forward")
        if not req.options.internal and forwarding is not None and forwarding.strip() != "1":
            raise InvalidRequest(
                "IP forwarding is off on the host (net.ipv4.ip_forward=0), so containers "
                "could not reach beyond their network; enable it (sysctl -w "
                "net.ipv4.ip_forward=1) or create the network with --internal")

    def _check_host_routes(self, pool: ipaddress.IPv4Network, bridge: str) -> None:
        """Refuse a pool that overlaps a route of the host's (its LAN, a VPN, another
        bridge): the bridge's route would take those addresses from it. Routes of ``bridge``
        itself (a user's bridge the network takes over) and of this instance's other bridges
        (left to _drop_superseded) are no conflict, nor is the default route."""
        for dst, oif in self.netlink.routes_v4():
            if dst.prefixlen == 0 or not dst.overlaps(pool):
                continue
            name = self.netlink.name_of(oif) if oif else None
            if name is not None and (name == bridge
                                     or self.store.network_by_bridge(name) is not None):
                continue
            raise InvalidRequest(f"subnet {pool} overlaps the host's route to {dst}"
                                 f"{f' via {name}' if name else ''}: the network's bridge "
                                 "would take those addresses from it; choose another subnet")

    def _drop_superseded(self, req: protocol.CreateNetwork,
                         networks: list[NetworkRecord]) -> bool:
        """Remove networks dockerd must have deleted while pynet could not be told.

        dockerd gives up on DeleteNetwork after ~15 s of retries when pynet is down, and drops
        the network anyway. Its own IPAM never hands out overlapping pools, so a new pool of
        it that overlaps a recorded one of it proves that network is gone; without this its
        bridge, routes, rules and bridge name would stay taken for good. Any other overlap
        proves nothing (another IPAM driver may overlap pools) and two bridges must not route
        one subnet: the new network is refused, before anything is marked. True if any was
        marked for removal."""
        overlapping = [old for old in networks
                       if old.id != req.network_id and old.state == READY
                       and parse_network(old).ipv4.pool.overlaps(req.ipv4.pool)]
        for old in overlapping:
            prev = parse_network(old).ipv4
            if not prev.address_space == req.ipv4.address_space == DOCKER_IPAM_SPACE:
                raise InvalidRequest(
                    f"subnet {req.ipv4.pool} overlaps {prev.pool} of network {old.id[:12]} "
                    f"(bridge {old.bridge}); choose another subnet, or if 'docker network "
                    f"ls' no longer shows that network, remove it with 'pynet forget "
                    f"{old.id[:12]}'")
        for old in overlapping:
            log.warning("removing network %s (%s): dockerd now gives its pool %s to network "
                        "%s, so it was removed while pynet was down", old.id[:12], old.bridge,
                        parse_network(old).ipv4.pool, req.network_id[:12])
            self.delete_network(protocol.NetworkRef(old.id))
        return bool(overlapping)

    def build_network(self, record: NetworkRecord, req: protocol.CreateNetwork) -> None:
        br = record.bridge
        self.netlink.ensure_bridge(br, alias=None if record.preexisting else self.alias(record.id))
        # A host booted with ipv6.disable=1 has no net/ipv6 tree: nothing to turn off there.
        if not record.preexisting and self.sysctl.read("net/ipv6/conf/all/forwarding"):
            self.sysctl.ensure(f"net/ipv6/conf/{br}/accept_ra", "0")
        if req.ipv4.gateway is not None and not req.options.inhibit_ipv4:
            self.netlink.ensure_address(br, req.ipv4.gateway)
        if req.ipv6 is not None and req.ipv6.gateway is not None:
            self.sysctl.ensure(f"net/ipv6/conf/{br}/disable_ipv6", "0")
            self.netlink.ensure_address(br, req.ipv6.gateway)
            self.sysctl.ensure("net/ipv6/conf/all/forwarding", "1")
        if not req.options.internal:
            # 127.0.0.1 -> published port is DNATed onto the bridge: allow that source there.
            self.sysctl.ensure(f"net/ipv4/conf/{br}/route_localnet", "1")
        self._ensure_bridge_netfilter(icc=req.options.enable_icc)

    def _ensure_bridge_netfilter(self, icc: bool) -> None:
        """Bridged traffic must pass iptables for icc=false (Docker needs the same) and for
        a same-network peer using a published port (the reply is un-DNATed on the bridge)."""
        key = "net/bridge/bridge-nf-call-iptables"
        if self.sysctl.read(key) is not None:
            self.sysctl.ensure(key, "1")
        elif not icc:
            raise KernelError("enable_icc=false needs the br_netfilter module, and "
                              f"{self.sysctl.root}/{key} is missing: run 'modprobe br_netfilter'"
                              " on the host")
        else:
            log.warning("br_netfilter is not loaded: same-network peers cannot use each "
                        "other's published ports; run 'modprobe br_netfilter' on the host")

    def delete_network(self, ref: protocol.NetworkRef) -> None:
        """Mark the network (and any endpoint dockerd left) for the reaper; unknown ids are
        fine."""
        record = self.store.network(ref.network_id)
        if record is None:
            return
        for endpoint in self.store.endpoints(record.id):
            self.store.mark_deleting("endpoints", endpoint.id)
        record.state = DELETING
        self.store.put_network(record)
        checkpoint("delete_network.marked")
        self._wake_reaper.set()

    def defer_delete(self, network_id: str, endpoint_id: str | None = None) -> None:
        """For a delete that cannot get the lock in time: dockerd forgets the object whatever
        pynet answers, so refusing would leak it; marking it is one atomic update, and the
        reaper does the rest."""
        if endpoint_id is not None:
            marked = self.store.mark_deleting("endpoints", endpoint_id)
        else:
            marked = self.store.mark_deleting("networks", network_id)
        self._epoch.advance(2)
        if marked:
            log.warning("busy: %s %s marked for deletion without the lock",
                        "endpoint" if endpoint_id else "network", (endpoint_id or network_id)[:12])
            self._wake_reaper.set()

    def _reaper(self) -> None:
        while True:
            self._wake_reaper.wait()
            self._wake_reaper.clear()
            try:
                self.reap()
            except Exception:
                log.exception("finishing deletes failed; the next reconcile retries")

    def reap(self) -> None:
        """Finish answered deletes: rules first (one batch), then links, then records.

        Runs without the driver lock (calls go on meanwhile); every step is idempotent, so a
        reconcile or rollback doing the same teardown at the same time is harmless.
        """
        with self._reap_lock:
            unpublished = dict(self._unpublished)
            endpoints = [e for e in self.store.endpoints() if e.state == DELETING]
            networks = [n for n in self.store.networks() if n.state == DELETING]
            self.sync_firewall()
            for address, serial in unpublished.items():
                if self._unpublished.get(address) == serial:  # not unpublished again since
                    del self._unpublished[address]
            for endpoint in endpoints:
                self.teardown_endpoint(endpoint)
            for network in networks:
                self.teardown_network(network)
            while not self._unflushed.empty():
                self._flush_conntrack(self._unflushed.get())

    def teardown_network(self, record: NetworkRecord) -> None:
        """Undo a network whatever state it reached; the record goes last."""
        if record.state != DELETING:
            record.state = DELETING
            self.store.put_network(record)
        self.sync_firewall()
        checkpoint("delete_network.rules_removed")
        if not record.preexisting:  # a user's bridge stays, with its address, as Docker does
            self._deleter.delete(record.bridge)
        checkpoint("delete_network.bridge_deleted")
        self.store.delete_network(record.id)
        _PARSED.pop(record.id, None)

    @staticmethod
    def _roll_back(undo: Callable[[Any], None], record: Any) -> None:
        """Undo a failed call; if that fails too, the record (left in a non-ready state) lets
        the next reconcile finish the job, and dockerd still gets the original error."""
        try:
            undo(record)
        except Exception:
            log.exception("rolling back %s failed; reconcile will retry", record.id[:12])

    # -- endpoints -----------------------------------------------------------------------

    def _ready_network(self, network_id: str) -> tuple[NetworkRecord, protocol.CreateNetwork]:
        record = self.store.network(network_id)
        if record is None or record.state != READY:
            raise NotFound(f"network {network_id[:12]} is not known to pynet (was it created "
                           "with another driver, or removed?); recreate the network")
        if network_id not in self._confirmed:
            self._confirmed.add(network_id)
            self.store.mark_confirmed(network_id, time.time())
        return record, parse_network(record)

    def create_endpoint(self, req: protocol.CreateEndpoint) -> str | None:
        """Create the veth pair; return the MAC to report, or None if the user chose one."""
        network, net = self._ready_network(req.network_id)
        if req.address is None:
            raise InvalidRequest(f"endpoint {req.endpoint_id[:12]} has no IPv4 address; pynet "
                                 "networks need one")
        if req.address.ip not in net.ipv4.pool:
            raise InvalidRequest(f"address {req.address} is outside the network's subnet "
                                 f"{net.ipv4.pool}")
        if str(req.address) in self._unpublished:
            self.sync_firewall()  # the address's old port rules must not reach this endpoint
        record = self.store.endpoint(req.endpoint_id)
        if record is None:
            host, peer = self.veth_names(req.endpoint_id)
            record = EndpointRecord(
                id=req.endpoint_id, network_id=req.network_id, address=str(req.address),
                address_v6=str(req.address_v6) if req.address_v6 else None,
                mac=req.mac or mac_from_ipv4(req.address.ip), mac_given=req.mac is not None,
                host_veth=host, peer_veth=peer, created=time.time())
            self.store.put_endpoint(record)
            checkpoint("create_endpoint.recorded")
        try:
            self.build_endpoint(record, network, net)
            checkpoint("create_endpoint.veth_built")
        except Exception:
            self._roll_back(self.teardown_endpoint, record)
            raise
        if record.state != READY:
            record.state = READY
            self.store.put_endpoint(record)
        return None if record.mac_given else record.mac

    def build_endpoint(self, record: EndpointRecord, network: NetworkRecord,
                       net: protocol.CreateNetwork) -> None:
        # Hairpin: a container reaching its own published port via the host address is
        # DNATed back out of the bridge port it came in on.
        self.netlink.ensure_veth(record.host_veth, record.peer_veth, network.bridge,
                                 net.options.mtu, record.mac, self.alias(record.id),
                                 hairpin=not net.options.internal)

    def _ready_endpoint(self, endpoint_id: str) -> EndpointRecord:
        record = self.store.endpoint(endpoint_id)
        if record is None or record.state != READY:
            raise NotFound(f"endpoint {endpoint_id[:12]} is not known to pynet; "
                           "restart the container")
        return record

    def join(self, req: protocol.Join) -> Joined:
        """Hand the container end to dockerd with the network's gateways."""
        _, net = self._ready_network(req.network_id)
        record = self._ready_endpoint(req.endpoint_id)
        if net.options.internal:
            # No default route, as the bridge driver since Docker 25: nothing off the subnet
            # is reachable, the host's other addresses included.
            return Joined(record.peer_veth, net.options.iface_prefix, None, None)
        aux = net.ipv4.aux_addresses.get(DEFAULT_GATEWAY_AUX)
        gateway = aux.ip if aux is not None else (net.ipv4.gateway.ip if net.ipv4.gateway
                                                  else None)
        gateway_v6 = net.ipv6.gateway.ip if net.ipv6 and net.ipv6.gateway else None
        return Joined(record.peer_veth, net.options.iface_prefix,
                      str(gateway) if gateway else None,
                      str(gateway_v6) if gateway_v6 else None)

    def delete_endpoint(self, ref: protocol.EndpointRef) -> None:
        """Free any ports still published and mark the endpoint for the reaper; unknown ids
        are fine."""
        record = self.store.endpoint(ref.endpoint_id)
        if record is None:
            return
        if record.ports:
            self._release_ports(record)  # now: the next docker run may want the same port
            self._unpublished[record.address] = next(self._serial)
        record.state = DELETING
        self.store.put_endpoint(record)
        self._wake_reaper.set()

    def teardown_endpoint(self, record: EndpointRecord) -> None:
        if record.state != DELETING:
            record.state = DELETING
            self.store.put_endpoint(record)
        if record.ports:
            self._release_ports(record)
            self.store.put_endpoint(record)
            self.sync_firewall()
        checkpoint("delete_endpoint.marked")
        self._deleter.delete(record.host_veth)
        self._deleter.delete(record.peer_veth)  # back in the host after the container stopped
        checkpoint("delete_endpoint.veth_deleted")
        self.store.delete_endpoint(record.id)

    def endpoint_info(self, ref: protocol.EndpointRef) -> dict[str, str]:
        """Operational data for ``docker network inspect`` debugging (dockerd shows none)."""
        record = self.store.endpoint(ref.endpoint_id)
        if record is None:
            return {}
        network = self.store.network(record.network_id)
        return {
            "bridge": network.bridge if network else "",
            "host_veth": record.host_veth,
            "mac": record.mac,
            "ports": " ".join(f"{p.host_ip}:{p.host_port}->{p.port}/{p.proto}"
                              for p in record.ports),
        }

    # -- published ports -------------------------------------------------------------------

    def program_external(self, req: protocol.ProgramExternalConnectivity) -> None:
        """Publish the container's ports on this (its gateway) endpoint."""
        _, net = self._ready_network(req.network_id)
        record = self._ready_endpoint(req.endpoint_id)
        if net.options.internal:
            return  # like the built-in driver: -p on an internal network is ignored
        if not req.bindings and not record.ports:
            return  # dockerd calls this for every gateway endpoint, ports or not
        if record.ports:
            self._release_ports(record)  # a retried call: start from nothing
        try:
            for binding in req.bindings:
                host_ip = binding.host_ip or net.options.host_binding_ipv4
                if host_ip.version != 4:
                    log.warning("not publishing %s/%s on %s: pynet publishes IPv4 only",
                                binding.port, binding.proto, host_ip)
                    continue
                port = self.ports.reserve(binding.proto, host_ip, binding.host_port,
                                          binding.host_port_end)
                record.ports.append(PortRecord(binding.proto, binding.port, str(host_ip), port))
            self.store.put_endpoint(record)
            checkpoint("program_external.recorded")
            self.sync_firewall()
            checkpoint("program_external.rules_applied")
        except Exception:
            self._release_ports(record)
            self.store.put_endpoint(record)
            self.sync_firewall()
            raise

    def revoke_external(self, ref: protocol.EndpointRef) -> None:
        """Unpublish exactly what was programmed; unknown endpoints are fine."""
        record = self.store.endpoint(ref.endpoint_id)
        if record is None or not record.ports:
            return
        self._release_ports(record)
        self.store.put_endpoint(record)
        checkpoint("revoke_external.recorded")
        # The reaper removes the rules, then the address's conntrack entries (three dumps);
        # a CreateEndpoint given this address first removes the rules itself.
        self._unpublished[record.address] = next(self._serial)
        self._unflushed.put(ipaddress.ip_interface(record.address).ip)
        self._wake_reaper.set()

    def _flush_conntrack(self, address: ipaddress.IPv4Address) -> None:
        try:
            dropped = self.netlink.flush_conntrack(address)
            log.debug("dropped %d conntrack entries of %s", dropped, address)
        except Exception:
            log.exception("flushing conntrack entries of %s failed", address)

    def _release_ports(self, record: EndpointRecord) -> None:
        for p in record.ports:
            self.ports.release(p.proto, ipaddress.IPv4Address(p.host_ip), p.host_port)
        record.ports = []

    # -- firewall ------------------------------------------------------------------------

    def rules(self, current: Dump) -> RuleSet:
        """The rule set the records call for, given what exists in ``current``."""
        networks = [n for n in self.store.networks() if n.state != DELETING]
        endpoints_of: dict[str, list[EndpointRecord]] = {}
        for endpoint in self.store.endpoints():  # one query, however many networks
            endpoints_of.setdefault(endpoint.network_id, []).append(endpoint)
        specs: list[NetworkSpec] = []
        ports: list[PortSpec] = []
        for network in reversed(networks):  # newest first, as the bridge driver stacks them
            net = parse_network(network)
            specs.append(NetworkSpec(network.bridge, net.ipv4.pool, net.options.internal,
                                     net.options.enable_icc, net.options.enable_ip_masquerade,
                                     net.options.trusted_host_interfaces))
            for endpoint in endpoints_of.get(network.id, []):
                ip = ipaddress.ip_interface(endpoint.address).ip
                for p in endpoint.ports:
                    host_ip = ipaddress.IPv4Address(p.host_ip)
                    ports.append(PortSpec(network.bridge, ip, p.proto, p.port,
                                          None if host_ip == ANY else host_ip, p.host_port,
                                          net.options.enable_icc,
                                          net.options.trusted_host_interfaces))
        layout = docker_layout(current.tables.get("filter", {}))
        if layout != self.layout:
            log.info("firewall: %s found, pynet's rules follow it", layout)
            self.layout = layout
        stages = current.chain("filter", DOCKER_ISOLATION_2) is not None
        return render(self.chains, specs, ports, stages)

    def sync_firewall(self, fresh: bool = False, keep: bool = False) -> bool:
        """Make pynet's chains match the records; True if anything changed. ``fresh`` reads
        the kernel first instead of trusting what pynet last wrote (repairs need that).
        ``keep``: only add rules, leave removals to the reaper (see create_network)."""
        return self.iptables.apply(self.rules, fresh=fresh, keep=keep)
