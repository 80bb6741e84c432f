"""pynet's firewall as an nftables table of its own, ``table inet <instance name>``.

The rules do what the iptables backend's do (``rules.py`` says why each exists), laid out so
that neither a packet nor a change pays for the number of networks: every base chain looks a
bridge up in a verdict map and jumps to that network's chain, and published ports are set and
map elements. A network create or rm is a few element and chain commands in one transaction;
nothing is read back. No set or map has intervals (no subnet is a key): libnftables reads
every interval set's elements before each change that adds an element (README, Scale), so
the keys are bridge names and exact addresses, and a subnet appears only in its network's
own chains.

* ``raw`` (prerouting, raw priority): loopback sources and destinations on a bridge are dropped;
  ``fib daddr oifname vmap @protected`` jumps to ``raw-<BR>`` for a packet the host's main
  routing would send into a network's bridge, which lets through what comes from the bridge
  or a trusted host interface, and drops the rest if it is for the network's subnet and not
  for a host address (routing to the containers directly). The subnet is matched in the
  bridge's chain: the bridge alone would also catch prefixes routed via a container (a VPN
  container's clients) and, for IPv6, multicast of site or global scope, which the fib
  lookup may resolve to any interface's ``ff00::/8`` route.
* ``forward`` (filter priority): ``oifname vmap @inbound`` jumps to ``in-<BR>``: replies,
  DNATed connections to a published port (set ``@ports``), trusted interfaces to a published
  port, what the gateway mode opens (below), the bridge's own traffic if icc; everything else
  is dropped. Before it, ``iifname vmap
  @outbound`` jumps to ``out-<BR>`` of an internal network, which drops what leaves it (its
  containers' packets to a host address would otherwise be DNATed to a published port).
* nat: ``nat-prerouting`` (not from 127.0.0.0/8) and ``nat-output`` send packets for host
  addresses to ``published`` (maps ``@port_host``: address . protocol . port, and
  ``@port_any``: protocol . port); ``nat-postrouting`` masquerades hairpin connections (set
  ``@hairpin``), 127.0.0.0/8 sources onto a bridge, and, via ``iifname vmap @egress`` and
  ``masq-<BR>``, what the subnet sends through its bridge to elsewhere (as Docker 29's
  nftables backend: the host's own packets are not masqueraded, whatever their source).

Gateway modes (``rules.py``): a family in ``nat-unprotected`` or ``routed`` has no drop in
``raw-<BR>`` (no direct-routing protection), a ``routed`` one no rule in ``masq-<BR>``; ``in-<BR>``
accepts that family from elsewhere (``nat-unprotected``), or its ICMP and the container ports
in ``@routed`` (``routed``) before its final drop.

An accept in one base chain is final only for that chain: every other table (dockerd's, or
iptables-nft's) still sees the packet, and a drop anywhere is final. So pynet's drops hold
whatever dockerd does, and pynet's containers get out only where nothing else drops their
traffic: on a host where Docker 29 runs its nftables backend, which is where ``auto`` picks
this backend (``choice.py``).

IPv6 has the twin of every address set and map (suffix ``6``: ``@ports6``, ...) and of every
rule that matches an address; the interface rules and maps serve both families. ::1 is
not DNATed (the kernel never routes it off the host): host ::1 -> published port is reset.
"""

import functools
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from plugin.errors import KernelError
from plugin.firewall.libnft import Nft, generation, tables
from plugin.firewall.rules import (
    ICMP,
    LINK_LOCAL_V6,
    LOOPBACK,
    LOOPBACK_V6,
    Desired,
    NetworkSpec,
    PortSpec,
)
from plugin.options import NAT, NAT_UNPROTECTED, ROUTED

log = logging.getLogger(__name__)

FAMILY = "inet"
# The address sets and maps of each family: name -> nft specification (a map's has a ':');
# "{a}" is the family's address type. IPv6's names end in 6.
_ADDRESS_SETS: dict[str, str] = {
    "ports": "type ifname . {a} . inet_proto . inet_service;",
    "routed": "type ifname . {a} . inet_proto . inet_service;",  # gateway mode routed
    "hairpin": "type {a} . {a} . inet_proto . inet_service;",
    "port_host": "type {a} . inet_proto . inet_service : {a} . inet_service;",
    "port_any": "type inet_proto . inet_service : {a} . inet_service;",
}
_SUFFIX = {4: "", 6: "6"}
MAX_PROBLEMS = 10  # differences() names at most this many (it goes into a log line)
_IP = {4: "ip", 6: "ip6"}  # each family's match keyword
SETS: dict[str, str] = {
    "bridges": "type ifname;",  # bridges of networks that are not internal
    "inbound": "type ifname : verdict;",
    "outbound": "type ifname : verdict;",
    "protected": "typeof fib daddr oifname : verdict;",  # raw: bridges with subnets to guard
    "egress": "type ifname : verdict;",  # nat-postrouting: bridges of masqueraded subnets
    **{name + _SUFFIX[v]: spec.format(a=f"ipv{v}_addr")
       for v in (4, 6) for name, spec in _ADDRESS_SETS.items()},
}
OWN_KEPT = 4096  # pynet's own transactions remembered by generation (NFTables._own)
_PORT_SETS = tuple(name + _SUFFIX[v] for v in (4, 6) for name in _ADDRESS_SETS)


def _twins(*rules: str) -> tuple[str, ...]:
    """Each rule for IPv4 and for IPv6: "{ip}" is the family's match keyword, "{s}" the
    suffix of its set names."""
    return tuple(rule.format(ip=ip, s=_SUFFIX[v]) for v, ip in _IP.items() for rule in rules)


_PORT = _twins("oifname . {ip} daddr . meta l4proto . th dport @ports{s}")
_NFPROTO = {4: "ipv4", 6: "ipv6"}


def _opened(br: str, net: NetworkSpec) -> tuple[str, ...]:
    """What the network's gateway modes let into it from elsewhere beyond replies and
    published ports (``rules.opened``): everything of a ``nat-unprotected`` family, ICMP
    and the published ports (``@routed``) of a ``routed`` one."""
    rules: list[str] = []
    for v, ip in _IP.items():
        family = f"iifname != {br} meta nfproto {_NFPROTO[v]}"
        if net.mode(v) == NAT_UNPROTECTED:
            rules.append(f"{family} accept")
        elif net.mode(v) == ROUTED:
            rules += [f"{family} meta l4proto {ICMP[v]} accept",
                      f"iifname != {br} oifname . {ip} daddr . meta l4proto . th dport "
                      f"@routed{_SUFFIX[v]} accept"]
    return tuple(rules)

# Chains every table has: name -> (hook specification or None, rules).
BASE_CHAINS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "raw": ("type filter hook prerouting priority raw; policy accept;", (
        f"iifname @bridges ip saddr {LOOPBACK} drop",
        f"iifname @bridges ip daddr {LOOPBACK} drop",
        f"iifname @bridges ip6 saddr {LOOPBACK_V6} drop",
        f"iifname @bridges ip6 daddr {LOOPBACK_V6} drop",
        "fib daddr oifname vmap @protected",
    )),
    "forward": ("type filter hook forward priority filter; policy accept;", (
        "iifname vmap @outbound",  # first: the accepts of in-<BR> end the chain
        "oifname vmap @inbound",
    )),
    "published": (None, (
        # a link-local client cannot be answered from another link (Docker skips it too)
        f"ip6 saddr {LINK_LOCAL_V6} return",
        *_twins("dnat {ip} to {ip} daddr . meta l4proto . th dport map @port_host{s}",
                "dnat {ip} to meta l4proto . th dport map @port_any{s}"),
    )),
    "nat-prerouting": ("type nat hook prerouting priority dstnat; policy accept;", (
        f"ip daddr != {LOOPBACK} fib daddr type local jump published",
        f"ip6 daddr != {LOOPBACK_V6} fib daddr type local jump published",
    )),
    "nat-output": ("type nat hook output priority -100; policy accept;", (
        f"ip6 daddr {LOOPBACK_V6} return",
        "fib daddr type local jump published",
    )),
    "nat-postrouting": ("type nat hook postrouting priority srcnat; policy accept;", (
        *_twins("{ip} saddr . {ip} daddr . meta l4proto . th dport @hairpin{s} masquerade"),
        f"oifname @bridges ip saddr {LOOPBACK} masquerade",
        "iifname vmap @egress",
    )),
}


@dataclass
class NftState:
    """What pynet's table holds beyond its fixed skeleton: the networks' chains (name ->
    rules) and the elements of each set or map (key -> value, None in a set), all written as
    nft reads them in."""

    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    elements: dict[str, dict[str, str | None]] = field(
        default_factory=lambda: {name: {} for name in SETS})


def _names(names: tuple[str, ...]) -> str:
    return "{ " + ", ".join(f'"{n}"' for n in names) + " }"


@functools.lru_cache(maxsize=8192)
def _network(net: NetworkSpec) -> tuple[tuple[tuple[str, tuple[str, ...]], ...],
                                         tuple[tuple[str, str, str | None], ...]]:
    """One network's chains (name, rules) and elements (set, key, value), remembered per
    spec: ``Rendering`` asks again for a network that went, to take out what it added."""
    br, quoted = net.bridge, f'"{net.bridge}"'
    chains: dict[str, tuple[str, ...]] = {}
    elements: list[tuple[str, str, str | None]] = []
    guarded = tuple(f"{_IP[v]} daddr {net.subnet_of(v)} fib daddr type != local drop"
                    for v in (4, 6) if net.subnet_of(v) is not None and net.mode(v) == NAT)
    if guarded:  # the other modes are for direct routing
        trusted = (f"iifname {_names(net.trusted)} return",) if net.trusted else ()
        chains[f"raw-{br}"] = (f"iifname {quoted} return", *trusted, *guarded)
        elements.append(("protected", quoted, f"jump raw-{br}"))
    masquerade = tuple(f"oifname != {quoted} {_IP[v]} saddr {net.subnet_of(v)} masquerade"
                       for v in (4, 6) if net.subnet_of(v) is not None and net.masquerades(v))
    if masquerade:
        chains[f"masq-{br}"] = masquerade
        elements.append(("egress", quoted, f"jump masq-{br}"))
    # icc off: neighbour discovery still passes, as ARP does (rules.network_filter_rules)
    intra = (f"iifname {quoted} accept",) if net.icc else () if net.internal else (
        f"iifname {quoted} icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} "
        "accept",)
    if net.internal:
        chains[f"in-{br}"] = (*intra, "drop")
        chains[f"out-{br}"] = (f"oifname != {quoted} drop",)
        elements.append(("outbound", quoted, f"jump out-{br}"))
    else:
        via_trusted = tuple(f"iifname {_names(net.trusted)} {port} accept"
                            for port in _PORT) if net.trusted else ()
        chains[f"in-{br}"] = ("ct state established,related accept",
                              *(f"ct status dnat {port} accept" for port in _PORT),
                              *via_trusted, *_opened(quoted, net), *intra, "drop")
        elements.append(("bridges", quoted, None))
    elements.append(("inbound", quoted, f"jump in-{br}"))
    return tuple(chains.items()), tuple(elements)


class Rendering:
    """``render`` that remembers its last networks: a change renders the networks that came
    or went and copies the rest of the networks' part (a dict copy, not a Python loop per
    network); ports, a handful, are rendered anew. Safe to call from several threads: its
    memory is one tuple, replaced whole."""

    def __init__(self) -> None:
        self._last: tuple[frozenset[NetworkSpec], NftState] = (frozenset(), NftState())

    def __call__(self, desired: Desired) -> NftState:
        """The chains and elements for ``desired``."""
        rendered, state = self._last
        networks = frozenset(desired.networks)
        gone, came = rendered - networks, networks - rendered
        if gone or came:
            chains = dict(state.chains)
            elements = {name: dict(items) for name, items in state.elements.items()}
            for net in gone:  # first: one that came may reuse its bridge name
                net_chains, net_elements = _network(net)
                for name, _rules in net_chains:
                    chains.pop(name, None)  # bridge names are unique: only ever there once
                for name, key, _value in net_elements:
                    elements[name].pop(key, None)
            for net in came:
                net_chains, net_elements = _network(net)
                chains.update(net_chains)
                for name, key, value in net_elements:
                    elements[name][key] = value
            state = NftState(chains, elements)
            self._last = (networks, state)
        return _with_ports(state, desired.ports) if desired.ports else state


def render(desired: Desired) -> NftState:
    """The chains and elements for ``desired``."""
    return Rendering()(desired)


def _with_ports(networks: NftState, ports: list[PortSpec]) -> NftState:
    """``networks`` (a state without ports) plus the elements of ``ports``, which go in sets
    of their own."""
    el: dict[str, dict[str, str | None]] = {name: {} for name in _PORT_SETS}
    for p in ports:
        ip, to, s = p.container_ip, f"{p.container_ip} . {p.port}", _SUFFIX[p.container_ip.version]
        if p.routed:
            el["routed" + s][f'"{p.bridge}" . {ip} . {p.proto} . {p.port}'] = None
            continue
        el["ports" + s][f'"{p.bridge}" . {ip} . {p.proto} . {p.port}'] = None
        el["hairpin" + s][f"{ip} . {ip} . {p.proto} . {p.port}"] = None
        if p.host_ip is None:
            el["port_any" + s][f"{p.proto} . {p.host_port}"] = to
        else:
            el["port_host" + s][f"{p.host_ip} . {p.proto} . {p.host_port}"] = to
    return NftState(networks.chains, {**networks.elements, **el})


def merged(old: NftState, new: NftState) -> NftState:
    """``new`` plus what ``old`` has beyond it (an apply that only adds)."""
    return NftState({**old.chains, **new.chains},
                    {name: {**old.elements[name], **new.elements[name]} for name in SETS})


def _kind(name: str) -> str:
    return "map" if ":" in SETS[name] else "set"


def _elements(verb: str, where: str, name: str, items: Mapping[str, str | None]) -> list[str]:
    if not items:
        return []
    body = ", ".join(key if value is None or verb == "delete" else f"{key} : {value}"
                     for key, value in items.items())
    return [f"{verb} element {where} {name} {{ {body} }}"]


def full_batch(table: str, state: NftState) -> str:
    """The transaction that replaces pynet's table with one holding ``state`` (a table that
    is not there is made first, so the delete cannot fail)."""
    where = f"{FAMILY} {table}"
    lines = [f"add table {where}", f"delete table {where}", f"add table {where}"]
    lines += [f"add {_kind(name)} {where} {name} {{ {spec} }}" for name, spec in SETS.items()]
    lines += [f"add chain {where} {name}" + (f" {{ {hook} }}" if hook else "")
              for name, (hook, _) in BASE_CHAINS.items()]
    lines += [f"add chain {where} {name}" for name in state.chains]
    for name, rules in state.chains.items():
        lines += [f"add rule {where} {name} {rule}" for rule in rules]
    for name, (_, rules) in BASE_CHAINS.items():
        lines += [f"add rule {where} {name} {rule}" for rule in rules]
    for name in SETS:
        lines += _elements("add", where, name, state.elements[name])
    return "\n".join(lines) + "\n"


def delta_batch(table: str, old: NftState, new: NftState) -> str | None:
    """The transaction that turns ``old`` into ``new``; None if they are equal. Elements go
    before the chains they jump to, and come after the chains they need."""
    where = f"{FAMILY} {table}"
    lines: list[str] = []
    # Set operations on the dicts' views: with thousands of networks, the few that changed
    # are found without a Python loop over the rest.
    for name in SETS:
        before, after = old.elements[name], new.elements[name]
        if before is not after:
            lines += _elements("delete", where, name, dict(sorted(before.items() - after.items())))
    for name in sorted(old.chains.keys() - new.chains.keys()):
        lines += [f"flush chain {where} {name}", f"delete chain {where} {name}"]
    for name, rules in sorted(new.chains.items() - old.chains.items()):
        verb = "flush" if name in old.chains else "add"
        lines.append(f"{verb} chain {where} {name}")
        lines += [f"add rule {where} {name} {rule}" for rule in rules]
    for name in SETS:
        before, after = old.elements[name], new.elements[name]
        if before is not after:
            lines += _elements("add", where, name, dict(sorted(after.items() - before.items())))
    return "\n".join(lines) + "\n" if lines else None


def _atom(value: Any, kind: str) -> str:
    if isinstance(value, dict) and "prefix" in value:
        return f"{value['prefix']['addr']}/{value['prefix']['len']}"
    return f'"{value}"' if kind in ("ifname", "string") else str(value)  # string: typeof fib


def _text(value: Any, kinds: list[str]) -> str:
    """A key or value of nft's JSON listing, written as ``render`` writes it."""
    if isinstance(value, dict) and "concat" in value:
        return " . ".join(_atom(v, k) for v, k in zip(value["concat"], kinds, strict=True))
    if isinstance(value, dict) and kinds == ["verdict"]:
        (verdict, detail), = value.items()
        return f"{verdict} {detail['target']}" if detail else verdict
    return _atom(value, kinds[0])


def _listed_elements(item: dict[str, Any]) -> dict[str, str | None]:
    """The elements of a set or map object of nft's JSON listing."""
    kinds = item["type"] if isinstance(item["type"], list) else [item["type"]]
    values = item.get("map")  # a map's value type: "verdict", "ipv4_addr . inet_service"
    # (nftables 1.1 and later list a concatenation as a list)
    value_kinds = values if isinstance(values, list) else values.split(" . ") if values else []
    out: dict[str, str | None] = {}
    for elem in item.get("elem", []):
        if values is None:
            out[_text(elem, kinds)] = None
        else:
            key, value = elem
            out[_text(key, kinds)] = _text(value, value_kinds)
    return out


def differences(objects: list[dict[str, Any]], state: NftState) -> str | None:
    """What the listed table lacks or has beyond ``state`` (a description), or None. Rules
    are compared by number per chain; elements one by one."""
    chains = {o["chain"]["name"] for o in objects if "chain" in o}
    rules: dict[str, int] = {}
    for o in objects:
        if "rule" in o:
            rules[o["rule"]["chain"]] = rules.get(o["rule"]["chain"], 0) + 1
    wanted = {name: len(r) for name, (_, r) in BASE_CHAINS.items()}
    wanted.update({name: len(r) for name, r in state.chains.items()})
    problems = [f"chain {name} is missing" for name in wanted if name not in chains]
    problems += [f"chain {name} has {rules.get(name, 0)} rule(s), not {count}"
                 for name, count in wanted.items()
                 if name in chains and rules.get(name, 0) != count]
    problems += [f"chain {name} is not pynet's" for name in sorted(chains - wanted.keys())]
    listed = {o[kind]["name"]: o[kind] for o in objects for kind in ("set", "map") if kind in o}
    problems += [f"{'map' if 'map' in listed[name] else 'set'} {name} is not pynet's"
                 for name in sorted(listed.keys() - SETS.keys())]  # an earlier release's
    for name in SETS:
        if name not in listed:
            problems.append(f"{_kind(name)} {name} is missing")
        elif _listed_elements(listed[name]) != state.elements[name]:
            problems.append(f"{_kind(name)} {name} has other elements")
    if len(problems) > MAX_PROBLEMS:  # a table from an earlier release differs everywhere
        problems[MAX_PROBLEMS:] = [f"{len(problems) - MAX_PROBLEMS} more"]
    return "; ".join(problems) or None


class NFTables:
    """The nftables firewall backend (one ``plugin.firewall.backend.Firewall``).

    Writes are serialised. What the last write left is remembered, so a change is written as
    the difference to it without reading the table; a write that fails (the table was
    flushed or deleted under pynet) and a fresh read that finds the table unlike the records
    rewrite the whole table in one transaction, so there is no moment without pynet's drops.
    """

    name = "nftables"
    ipv6 = True  # an inet table: both families' rules in one

    def __init__(self, table: str, nft: Nft | None = None) -> None:
        self.table = table
        self.nft = nft or Nft()
        self._lock = threading.Lock()
        self._known: NftState | None = None
        self._render = Rendering()
        # The generations pynet's own writes made, the last of them with the state it left,
        # and the generation at which a check last found the table holding a known state.
        # While every transaction since was one of pynet's, the table holds what the last of
        # them left, and a check need not list it (``_held``).
        self._own: set[int] = set()
        self._last_own: tuple[int, NftState] | None = None
        self._verified: tuple[int, NftState] | None = None

    def _problem(self, state: NftState) -> str | None:
        objects = self.nft.table(FAMILY, self.table)
        if objects is None:
            return f"table {FAMILY} {self.table} is missing"
        return differences(objects, state)

    def _run(self, batch: str, state: NftState) -> None:
        """Run one transaction that leaves the table holding ``state`` (the caller holds the
        lock). Every transaction on the host that changes something moves the ruleset's
        generation by one, so when it moved by one across the run, the generation it reached
        is this write's (pynet's batches always change something: they are the difference to
        what it last wrote, or the whole table)."""
        before = _generation_or_none()
        self._known = None  # until the run succeeds: what the table holds is not known
        self.nft.run(batch)
        self._known = state
        after = _generation_or_none()
        if before is not None and after == before + 1:
            if len(self._own) >= OWN_KEPT:
                self._own = set()  # checks found nothing for long: the next one lists
            self._own.add(after)
            self._last_own = (after, state)

    def _rewrite(self, state: NftState, why: str) -> None:
        log.info("nftables: %s; writing table %s %s whole", why, FAMILY, self.table)
        self._run(full_batch(self.table, state), state)

    def apply(self, desired: Callable[[], Desired], fresh: bool = False,
              keep: bool = False) -> bool:
        """Make pynet's table match ``desired()``; True if anything had to change.
        ``fresh`` reads the table instead of trusting what the last write left; ``keep``
        only adds (what is no longer desired stays for a later apply to remove)."""
        with self._lock:
            state = self._render(desired())
            if keep and self._known is not None:
                state = merged(self._known, state)
            if self._known is None or fresh:
                problem = self._problem(state)
                if problem is None:
                    self._known = state
                    return False
                self._rewrite(state, problem)
                return True
            batch = delta_batch(self.table, self._known, state)
            if batch is None:
                return False
            try:
                self._run(batch, state)
            except KernelError as exc:
                self._rewrite(state, f"a change failed ({exc})")
            return True

    def _held(self, gen: int) -> NftState | None:
        """What the table holds at generation ``gen``, if pynet knows: a check found it
        holding a known state at an earlier generation, and every transaction since was one
        of pynet's own writes. Without this, a host where networks come and go would list the
        whole table at every check."""
        verified, last = self._verified, self._last_own
        if verified is None or self._known is None or not 0 <= gen - verified[0] <= OWN_KEPT:
            return None  # never checked, or a write failed (it left the table unknown)
        if gen == verified[0]:
            return verified[1]
        own = self._own
        if last is None or last[0] != gen \
                or any(g not in own for g in range(verified[0] + 1, gen + 1)):
            return None
        return last[1]

    def repair_needed(self, desired: Callable[[], Desired]) -> str | None:
        """What a fresh read says must change, or None. Takes no lock: calls must not wait
        for the periodic check. Listing a large table costs much more than asking for the
        generation, so while only pynet wrote since the last look, the table is not listed:
        it holds what pynet wrote, and where that is behind the records (a new network's
        owed rules, the reaper's pending removals) pynet's own next write brings it there;
        nothing was damaged. A listing during which any transaction ran proves nothing (it
        may show the table before or after it, and the records may be ahead of the rules for
        a moment): the next check looks again, and a change that fails on a damaged table
        rewrites it."""
        gen, state = generation(), self._render(desired())
        held = self._held(gen)
        if held is not None:
            self._verify(gen, held)
            return None
        problem = self._problem(state)
        if generation() != gen:
            return None
        if problem is None and self._known == state:  # pynet's next change starts from it
            self._verify(gen, state)
        return problem

    def _verify(self, gen: int, state: NftState) -> None:
        """Note that the table held ``state`` at ``gen``; forget pynet's writes before it.
        Unlocked: the copy (one C call) is what a concurrent write cannot change under the
        loop; a write it misses costs a later check a listing, nothing more."""
        self._verified = (gen, state)
        self._own = {g for g in set(self._own) if g > gen}

    def remove_all(self) -> bool:
        """Delete pynet's table (uninstall); True if it was there."""
        with self._lock:
            self._known = None
            if self.nft.table(FAMILY, self.table) is None:
                return False
            self.nft.run(f"delete table {FAMILY} {self.table}")
            return True

    def layout(self) -> str:
        """Which firewall dockerd keeps, from the tables there are."""
        if dockerd_nftables():
            return "Docker's nftables backend (table ip docker-bridges)"
        return "no table ip docker-bridges (dockerd runs iptables, or is not running)"


def _generation_or_none() -> int | None:
    try:
        return generation()
    except KernelError:
        return None  # the write goes on; a check lists the table instead


def dockerd_nftables() -> bool:
    """Whether dockerd's nftables bridge table exists (``choice.dockerd_runs_nftables`` says
    what it means)."""
    return "docker-bridges" in tables("ip")
