"""The decisions: what a network or endpoint needs, in which order, and how to undo it.

Every mutating call follows one pattern: validate (protocol.py did most of it), write the record
in state ``creating``/``deleting``, run idempotent kernel steps, then mark it ``ready`` or forget
it. A failure rolls the kernel back before the error reaches dockerd, so a refused request
leaves nothing behind; a crash leaves a record that tells reconcile.py what to finish.

Deletes are answered once their records say ``deleting``; deletes.py finishes them (and says
what runs under which lock). Creates that could collide with an unfinished delete (a bridge
name or subnet) finish it first.
"""

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from plugin import protocol
from plugin.config import Settings
from plugin.deferred_rules import DeferredRules
from plugin.deletes import Deletes
from plugin.errors import Busy, InvalidRequest, KernelError, NotFound
from plugin.faults import checkpoint
from plugin.firewall.backend import Firewall
from plugin.firewall.rules import Desired, desired_from_records
from plugin.netconfig import NetworkConfig
from plugin.netlink import Netlink, mac_from_ipv4, random_local_mac
from plugin.options import ISOLATED, ROUTED, NetworkOptions
from plugin.ports import ANY, ANY_V6, Address, PortReservations
from plugin.store import DELETING, READY, EndpointRecord, NetworkRecord, PortRecord, Store
from plugin.sysctl import Sysctl

log = logging.getLogger(__name__)

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
    bridge driver, for a family in gateway mode ``isolated`` and for an internal network
    whose bridge gets no IPv4 address (inhibit_ipv4); the containers may use it then."""
    return (options.gateway_mode_ipv4 == ISOLATED or options.internal and options.inhibit_ipv4,
            options.gateway_mode_ipv6 == ISOLATED)


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


def _overlap(config: NetworkConfig, req: protocol.CreateNetwork) -> str | None:
    """"<pool of req> overlaps <subnet of config>" (IPv4 first), or None. CreateNetwork asks
    this of every recorded network: both sides compare as integers computed once."""
    for subnet, theirs, ipam in zip((config.subnet, config.subnet_v6), config.spans,
                                    (req.ipv4, req.ipv6), strict=True):
        if theirs is not None and ipam is not None \
                and theirs[0] <= ipam.span[1] and ipam.span[0] <= theirs[1]:
            return f"{ipam.pool} overlaps {subnet}"
    return None


class Driver:
    """Networks and endpoints of one pynet instance."""

    def __init__(self, settings: Settings, store: Store, netlink: Netlink, sysctl: Sysctl,
                 firewall: Firewall, ports: PortReservations) -> None:
        self.settings = settings
        self.store = store
        self.netlink = netlink
        self.sysctl = sysctl
        self.firewall = firewall
        self.ports = ports
        self.ready = threading.Event()
        self._lock = threading.RLock()
        self._deleter = netlink.sibling()
        # Kernel work that runs beside the calls: new networks' rules (deferred_rules.py).
        self._side = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="side")
        self.rules_due = DeferredRules(lambda: self.sync_firewall(keep=True), self._side)
        self.deletes = Deletes(self)
        self._epoch = Epoch()
        self._confirmed: set[str] = set()  # networks dockerd named since this server started
        self.deletes.start()

    def close(self) -> None:
        """Stop the reaper, then release the sockets and the database (in-process users:
        tests and tools; the server's process just exits)."""
        self.deletes.stop()
        self._side.shutdown(wait=True)
        self._deleter.close()
        self.netlink.close()
        self.store.close()

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
        """Build the bridge and its addresses, or nothing at all; its rules are owed until
        after the answer (deferred_rules.py)."""
        bridge = req.options.bridge_name or f"pn-{req.network_id[:12]}"
        record = self.store.network(req.network_id)
        if record is None:
            self._check_supported(req, bridge)
        if record is not None and record.state == READY:
            return  # dockerd retried a call that succeeded
        if record is None:
            networks = self.store.networks()
            dropped = self._drop_superseded(req, networks)
            if dropped or any(n.state == DELETING and (n.bridge == bridge
                                                       or _overlap(n.config, req))
                              for n in networks):
                self.reap()  # the bridge name or subnet asked for is still being let go
            link = self.netlink.get(bridge)
            if link is not None and link.kind != "bridge":
                raise InvalidRequest(f"interface {bridge} exists and is a {link.kind or 'device'}"
                                     ", not a bridge; choose another "
                                     "com.docker.network.bridge.name")
            mine = link is not None and link.alias.startswith(self.settings.alias_prefix)
            record = NetworkRecord(id=req.network_id, bridge=bridge,
                                   config=NetworkConfig.from_request(req),
                                   preexisting=link is not None and not mine,
                                   confirmed=time.time())
            self._confirmed.add(record.id)
            self.store.put_network(record)  # refuses a bridge another network holds
            checkpoint("create_network.recorded")
        try:
            self.build_network(record)
            checkpoint("create_network.bridge_built")
        except Exception:
            self._roll_back(self.teardown_network, record)
            raise
        self.store.put_network(replace(record, state=READY))
        # Its rules only add: rules of networks and ports being deleted are the reaper's to
        # remove (a `docker network create` right after an rm would otherwise pay for the
        # deletions). They cannot touch this network: a pending delete with its bridge name
        # or an overlapping subnet was finished above.
        self.rules_due.owe()

    def _check_supported(self, req: protocol.CreateNetwork, bridge: str) -> None:
        """Refuse networks pynet cannot build as safely as the bridge driver would."""
        req.check_host_safety()
        if req.ipv4 is not None:
            self._check_host_routes(ipaddress.IPv4Network(req.ipv4.pool), bridge)
        if req.ipv6 is not None:
            self._check_ipv6(ipaddress.IPv6Network(req.ipv6.pool), bridge,
                             internal=req.options.internal)
        forwarding = self.sysctl.read("net/ipv4/ip_forward")
        if req.ipv4 is not None and not req.options.internal and forwarding is not None \
                and forwarding.strip() != "1":
            raise InvalidRequest(
                "IP forwarding is off on the host (net.ipv4.ip_forward=0), so containers "
                "could not reach beyond their network; enable it (sysctl -w "
                "net.ipv4.ip_forward=1) or create the network with --internal")

    def _check_ipv6(self, pool: ipaddress.IPv6Network, bridge: str, internal: bool) -> None:
        """Refuse an IPv6 network pynet could not firewall, whose pool the host routes, or
        whose containers could not get out because the host does not forward IPv6 (pynet
        does not turn that on: it makes the host route IPv6 between all its interfaces,
        which is the administrator's call, as for IPv4)."""
        disabled = self.sysctl.read("net/ipv6/conf/all/disable_ipv6")
        if disabled is None or disabled.strip() != "0":
            raise InvalidRequest("IPv6 is disabled on the host (booted with ipv6.disable=1, or "
                                 "net.ipv6.conf.all.disable_ipv6=1); create the network "
                                 "without --ipv6, or enable IPv6 on the host")
        if not self.firewall.ipv6:
            raise InvalidRequest(
                f"pynet's {self.firewall.name} firewall cannot write IPv6 rules here (the "
                "host has no ip6tables), so the network's containers would be open to every "
                "other network over IPv6; install ip6tables, or create the network without "
                "--ipv6")
        self._check_host_routes(pool, bridge)
        forwarding = self.sysctl.read("net/ipv6/conf/all/forwarding")
        if not internal and forwarding is not None and forwarding.strip() != "1":
            raise InvalidRequest(
                "IPv6 forwarding is off on the host (net.ipv6.conf.all.forwarding=0), so "
                "containers could not reach beyond their network over IPv6; enable it "
                "(sysctl -w net.ipv6.conf.all.forwarding=1, with 'ip6tables -P FORWARD DROP' "
                "as Docker sets it, since the host then routes IPv6 between all its "
                "interfaces) or create the network with --internal")

    def _check_host_routes(self, pool: ipaddress.IPv4Network | ipaddress.IPv6Network,
                           bridge: str) -> None:
        """Refuse a pool that overlaps a route of the host's (its LAN, a VPN, another
        bridge): the bridge's route would take those addresses from it. Routes of ``bridge``
        itself (a user's bridge the network takes over) and of this instance's other bridges
        (left to _drop_superseded) are no conflict, nor are default routes (0.0.0.0/0, or the
        two halves a VPN installs in its place)."""
        mine = {bridge, *(n.bridge for n in self.store.networks())}
        routes = self.netlink.routes_v4(overlapping=pool, skip=mine) if pool.version == 4 \
            else self.netlink.routes_v6(overlapping=pool, skip=mine)
        for dst, name in routes:
            if dst.prefixlen <= 1:
                continue
            raise InvalidRequest(f"subnet {pool} overlaps the host's route to {dst} via {name}"
                                 ": the network's bridge would take those addresses from it; "
                                 "choose another subnet")

    def _drop_superseded(self, req: protocol.CreateNetwork,
                         networks: tuple[NetworkRecord, ...]) -> bool:
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
                       and _overlap(old.config, req)]
        for old in overlapping:
            prev = old.config
            if not prev.address_space == req.address_space == DOCKER_IPAM_SPACE:
                raise InvalidRequest(
                    f"subnet {_overlap(prev, req)} of network {old.id[:12]} "
                    f"(bridge {old.bridge}); choose another subnet, or if 'docker network "
                    f"ls' no longer shows that network, remove it with 'pynet forget "
                    f"{old.id[:12]}'")
        for old in overlapping:
            log.warning("removing network %s (%s): dockerd's pool %s for network %s, so it "
                        "was removed while pynet was down", old.id[:12], old.bridge,
                        _overlap(old.config, req), req.network_id[:12])
            self.delete_network(protocol.NetworkRef(old.id))
        return bool(overlapping)

    def build_network(self, record: NetworkRecord) -> None:
        """Ensure the bridge, its addresses and its sysctls (create, or repair)."""
        br, config = record.bridge, record.config
        self.netlink.ensure_bridge(br, alias=None if record.preexisting else self.alias(record.id))
        # A host booted with ipv6.disable=1 has no net/ipv6 tree: nothing to turn off there.
        if self.sysctl.read("net/ipv6/conf/all/forwarding"):
            if not record.preexisting:
                self.sysctl.ensure(f"net/ipv6/conf/{br}/accept_ra", "0")
            self._ipv6_off(record)
        for address in config.bridge_addresses():
            if address.version == 6:
                self.sysctl.ensure(f"net/ipv6/conf/{br}/disable_ipv6", "0")
            self.netlink.ensure_address(br, address)
        if not config.internal:
            # 127.0.0.1 -> published port is DNATed onto the bridge: allow that source there.
            self.sysctl.ensure(f"net/ipv4/conf/{br}/route_localnet", "1")
        self._ensure_bridge_netfilter(icc=config.enable_icc)
        if config.subnet_v6 is not None or not config.enable_icc:  # rules.py: its IPv6 rules
            self._ensure_bridge_netfilter(icc=config.enable_icc, family="ip6tables")

    def _ipv6_off(self, record: NetworkRecord) -> None:
        """IPv6 off on the bridge pynet made for a network without IPv6: the host then neither
        takes nor routes IPv6 there, and such networks get no IPv6 rules (rules.py). And on
        any bridge, a user's too, of a network whose IPv6 is in gateway mode ``isolated``:
        the host has no address there, not even a link-local one (as the bridge driver)."""
        config = record.config
        if config.gateway_mode_ipv6 == ISOLATED \
                or config.subnet_v6 is None and not record.preexisting:
            self.sysctl.ensure(f"net/ipv6/conf/{record.bridge}/disable_ipv6", "1")

    def ipv6_off_everywhere(self) -> None:
        """At start: IPv6 off where ``_ipv6_off`` says, including the bridges an earlier
        release built (it left IPv6 on, and wrote IPv6 rules for them instead)."""
        if self.sysctl.read("net/ipv6/conf/all/forwarding") is None:
            return  # no IPv6 on this host
        for record in self.store.networks():
            if record.state == READY and self.netlink.get(record.bridge) is not None:
                self._ipv6_off(record)

    def _ensure_bridge_netfilter(self, icc: bool, family: str = "iptables") -> None:
        """Bridged traffic must pass iptables (``family``: or ip6tables) for icc=false (Docker
        needs the same) and for a same-network peer using a published port (the reply is
        un-DNATed on the bridge)."""
        key = f"net/bridge/bridge-nf-call-{family}"
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
        if not self.store.mark_network_deleting(ref.network_id):
            return
        checkpoint("delete_network.marked")
        self.deletes.wake()

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
            self.deletes.wake()

    def reap(self) -> None:
        """Finish every answered delete now (deletes.py)."""
        self.deletes.reap()

    def teardown_network(self, record: NetworkRecord, rules_gone: bool = False) -> None:
        """Undo a network whatever state it reached; the record goes last. ``rules_gone``:
        the caller synced the firewall after the record was marked deleting (the reaper
        does, once for everything it removes)."""
        if record.state != DELETING:
            record = replace(record, state=DELETING)
            self.store.put_network(record)
            rules_gone = False
        if not rules_gone:
            self.sync_firewall()
        checkpoint("delete_network.rules_removed")
        if not record.preexisting:  # a user's bridge stays, with its address, as Docker does
            self._deleter.delete(record.bridge)
        checkpoint("delete_network.bridge_deleted")
        self.store.delete_network(record.id)

    @staticmethod
    def _roll_back(undo: Callable[[Any], None], record: Any) -> None:
        """Undo a failed call; if that fails too, the record (left in a non-ready state) lets
        the next reconcile finish the job, and dockerd still gets the original error."""
        try:
            undo(record)
        except Exception:
            log.exception("rolling back %s failed; reconcile will retry", record.id[:12])

    # -- endpoints -----------------------------------------------------------------------

    def _ready_network(self, network_id: str) -> NetworkRecord:
        record = self.store.network(network_id)
        if record is None or record.state != READY:
            raise NotFound(f"network {network_id[:12]} is not known to pynet (was it created "
                           "with another driver, or removed?); recreate the network")
        if network_id not in self._confirmed:
            self._confirmed.add(network_id)
            self.store.mark_confirmed(network_id, time.time())
        return record

    def create_endpoint(self, req: protocol.CreateEndpoint) -> str | None:
        """Create the veth pair; return the MAC to report, or None if the user chose one."""
        network = self._ready_network(req.network_id)
        for family, address, subnet in ((4, req.address, network.config.subnet),
                                        (6, req.address_v6, network.config.subnet_v6)):
            if address is None and subnet is not None:
                raise InvalidRequest(f"endpoint {req.endpoint_id[:12]} has no IPv{family} "
                                     f"address; its network has the IPv{family} subnet {subnet}")
            if address is not None and (subnet is None or address not in subnet):
                raise InvalidRequest(f"IPv{family} address {address} is outside the network's "
                                     f"IPv{family} subnet "
                                     f"({subnet or f'none: the network has no IPv{family}'})")
        self.rules_due.settle()  # the network's own rules, before a port is on its bridge
        if any(self.deletes.rules_pending(str(a)) for a in (req.address, req.address_v6) if a):
            self.sync_firewall()  # the address's old port rules must not reach this endpoint
        record = self.store.endpoint(req.endpoint_id)
        if record is None:
            host, peer = self.veth_names(req.endpoint_id)
            record = EndpointRecord(
                id=req.endpoint_id, network_id=req.network_id,
                address=str(req.address) if req.address else None,
                address_v6=str(req.address_v6) if req.address_v6 else None,
                mac=req.mac or (mac_from_ipv4(req.address.ip) if req.address
                                else random_local_mac()),
                mac_given=req.mac is not None,
                host_veth=host, peer_veth=peer, created=time.time())
            self.store.put_endpoint(record)
            checkpoint("create_endpoint.recorded")
        try:
            self.build_endpoint(record, network)
            checkpoint("create_endpoint.veth_built")
        except Exception:
            self._roll_back(self.teardown_endpoint, record)
            raise
        if record.state != READY:
            record.state = READY
            self.store.put_endpoint(record)
        return None if record.mac_given else record.mac

    def build_endpoint(self, record: EndpointRecord, network: NetworkRecord) -> None:
        """Ensure the endpoint's veth pair on the network's bridge (create, or repair)."""
        # Hairpin: a container reaching its own published port via the host address is
        # DNATed back out of the bridge port it came in on.
        self.netlink.ensure_veth(record.host_veth, record.peer_veth, network.bridge,
                                 network.config.mtu, record.mac, self.alias(record.id),
                                 hairpin=not network.config.internal)

    def _ready_endpoint(self, endpoint_id: str) -> EndpointRecord:
        record = self.store.endpoint(endpoint_id)
        if record is None or record.state != READY:
            raise NotFound(f"endpoint {endpoint_id[:12]} is not known to pynet; "
                           "restart the container")
        return record

    def join(self, req: protocol.Join) -> Joined:
        """Hand the container end to dockerd with the network's gateways."""
        config = self._ready_network(req.network_id).config
        record = self._ready_endpoint(req.endpoint_id)
        if config.internal:
            # No default route, as the bridge driver since Docker 25: nothing off the subnet
            # is reachable, the host's other addresses included.
            return Joined(record.peer_veth, config.iface_prefix, None, None)
        gateway, gateway_v6 = config.default_gateway, config.gateway_v6
        return Joined(record.peer_veth, config.iface_prefix,
                      str(gateway) if gateway else None,
                      str(gateway_v6.ip) if gateway_v6 else None)

    def delete_endpoint(self, ref: protocol.EndpointRef) -> None:
        """Free any ports still published and mark the endpoint for the reaper; unknown ids
        are fine."""
        record = self.store.endpoint(ref.endpoint_id)
        if record is None:
            return
        unpublished = bool(record.ports)
        self._release_ports(record)  # now: the next docker run may want the same port
        record.state = DELETING
        self.store.put_endpoint(record)
        if unpublished:
            self.deletes.unpublished(record.addresses())
        else:
            self.deletes.wake()

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
            "ports": " ".join(str(p) for p in record.ports),
        }

    # -- published ports -------------------------------------------------------------------

    def program_external(self, req: protocol.ProgramExternalConnectivity) -> None:
        """Publish the container's ports on this (its gateway) endpoint."""
        config = self._ready_network(req.network_id).config
        record = self._ready_endpoint(req.endpoint_id)
        if config.internal:
            return  # like the built-in driver: -p on an internal network is ignored
        if not req.bindings and not record.ports:
            return  # dockerd calls this for every gateway endpoint, ports or not
        if record.ports:
            self._release_ports(record)  # a retried call: start from nothing
        try:
            for binding in req.bindings:
                record.ports += self._publish(binding, config, record)
            self.store.put_endpoint(record)
            checkpoint("program_external.recorded")
            self.sync_firewall()
            checkpoint("program_external.rules_applied")
        except Exception:
            self._release_ports(record)
            self.store.put_endpoint(record)
            self.sync_firewall()
            raise

    def _publish(self, binding: protocol.PortBinding, config: NetworkConfig,
                 record: EndpointRecord) -> list[PortRecord]:
        """Publish one ``-p`` binding on the host addresses ``_binding_hosts`` picks: a host
        port reserved per address (one port for both families when it is both 0.0.0.0 and
        ::), except in a family whose gateway mode is ``routed``: no NAT there, so no host
        port; the container's port is opened to direct routing instead, whatever host
        address was asked for (as the bridge driver does, which shows it as ``0.0.0.0:``)."""
        p = binding
        nat, routed = [], []
        for host_ip in self._binding_hosts(p, config, record):
            if config.gateway_mode(host_ip.version) == ROUTED:
                routed.append(PortRecord(p.proto, p.port, str(ANY if host_ip.version == 4
                                                                 else ANY_V6), 0))
            else:
                nat.append(host_ip)
        port = 0
        if len(nat) == 2:
            port = self.ports.reserve_both(p.proto, p.host_port, p.host_port_end)
        elif nat:
            port = self.ports.reserve(p.proto, nat[0], p.host_port, p.host_port_end)
        return [PortRecord(p.proto, p.port, str(ip), port) for ip in nat] + routed

    @staticmethod
    def _binding_hosts(p: protocol.PortBinding, config: NetworkConfig,
                       record: EndpointRecord) -> list[Address]:
        """The host addresses of one ``-p`` binding. Without a host address: host_binding_ipv4
        and, where the endpoint has an IPv6 address and that option was left at 0.0.0.0, ::
        too (as the bridge driver does); on an IPv6-only network, :: only. A host address of
        the other family than the container's is refused: Docker's docker-proxy would relay
        between the families, and pynet has no proxy."""
        if p.host_ip is not None:
            if p.host_ip.version == 6 and record.address_v6 is None:
                raise InvalidRequest(
                    f"cannot publish {p.port}/{p.proto} on {p.host_ip}: the container has no "
                    "IPv6 address on this network (create it with --ipv6), and pynet does not "
                    "relay IPv6 clients to IPv4 containers; publish on an IPv4 address")
            if p.host_ip.version == 4 and record.address is None:
                raise InvalidRequest(
                    f"cannot publish {p.port}/{p.proto} on {p.host_ip}: the container has no "
                    "IPv4 address on this network (an IPv6-only network), and pynet does not "
                    "relay IPv4 clients to IPv6 containers; publish on an IPv6 address")
            return [p.host_ip]
        v4 = config.host_binding_ipv4
        if record.address is None:  # an IPv6-only network
            if not v4.is_unspecified:  # the bridge driver binds no IPv6 then either
                raise InvalidRequest(
                    f"cannot publish {p.port}/{p.proto}: the network's host_binding_ipv4 is "
                    f"{v4} and the container has no IPv4 address (an IPv6-only network); "
                    "publish on an IPv6 address, e.g. -p [::]:PORT:PORT")
            return [ANY_V6]
        if record.address_v6 is None or not v4.is_unspecified:
            return [v4]
        return [v4, ANY_V6]

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
        self.deletes.unpublished(record.addresses(), flush=True)

    def flush_conntrack(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        """Drop the conntrack entries of a container address whose ports were unpublished."""
        try:
            dropped = self.netlink.flush_conntrack(address)
            log.debug("dropped %d conntrack entries of %s", dropped, address)
        except Exception:
            log.exception("flushing conntrack entries of %s failed", address)

    def _release_ports(self, record: EndpointRecord) -> None:
        for p in (p for p in record.ports if not p.routed):
            self.ports.release(p.proto, ipaddress.ip_address(p.host_ip), p.host_port)
        record.ports = []

    # -- firewall ------------------------------------------------------------------------

    def desired(self) -> Desired:
        """What the records ask of the firewall (read afresh at every call)."""
        return desired_from_records(self.store.networks(), self.store.endpoints())

    def sync_firewall(self, fresh: bool = False, keep: bool = False) -> bool:
        """Make the firewall match the records; True if anything changed. ``fresh`` reads
        the kernel first instead of trusting what pynet last wrote (repairs need that).
        ``keep``: only add rules, leave removals to the reaper (see create_network)."""
        return self.firewall.apply(self.desired, fresh=fresh, keep=keep)

    def firewall_repair(self) -> str | None:
        """What the firewall lacks, read afresh ("<backend>: <description>"), or None. None
        too while new networks' rules are on their way (deferred_rules.py), before or after
        the read: the periodic check's next look sees them written."""
        if self.rules_due.busy():
            return None
        repair = self.firewall.repair_needed(self.desired)
        if repair is None or self.rules_due.busy():
            return None
        return f"{self.firewall.name}: {repair}"

    # -- for reconcile.py ------------------------------------------------------------------

    def rebuild_network(self, record: NetworkRecord) -> None:
        """Ensure a ready network's bridge and the veths of its endpoints that still exist."""
        self.build_network(record)
        for endpoint in self.store.endpoints(record.id):
            if self.netlink.get(endpoint.host_veth) is not None:
                self.build_endpoint(endpoint, record)

    def owner_of(self, alias: str) -> str | None:
        """The network or endpoint id a link's alias names, if it marks this instance's."""
        prefix = self.settings.alias_prefix
        return alias[len(prefix):] if alias.startswith(prefix) else None

    def hold_ports(self) -> None:
        """Take the host-port reservations of recorded endpoints back (at start)."""
        for endpoint in self.store.endpoints():
            for p in (p for p in endpoint.ports if not p.routed):
                self.ports.hold(p.proto, ipaddress.ip_address(p.host_ip), p.host_port)
