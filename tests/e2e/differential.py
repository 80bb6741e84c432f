"""The differential harness: one scenario, run once with ``-d bridge`` and once with pynet.

A scenario is a function of a ``World``: it creates networks and containers through the World
(which names them per run and remembers what it made) and calls ``World.observe`` at each step
it wants compared. An observation holds the normalized rules (ruleview.py), a connectivity
matrix (netcheck.py) with every address replaced by its token, and optional facts such as MTUs.
``compare`` then checks Docker's run against the reference's expectations (so a broken harness
cannot pass by making both drivers fail alike) and pynet's run against Docker's, allowing only
the documented differences it is given.
"""

import difflib
import functools
import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lab import (
    Subnets,
    docker,
    docker_api_post,
    docker_ok,
    firewall_backend,
    ip6tables_save,
    link,
    nft_host_port,
    nft_objects,
    pynet_firewall,
    stable_iptables_save,
    wait_for,
)
from plugin.config import Settings
from tests.conftest import Resources
from tests.e2e import netcheck
from tests.e2e.ruleview import ORDERED, Tokens, host_port, scenario_rules

DOCKER = "docker"
PYNET = "pynet"


@dataclass(frozen=True)
class Cell:
    """One path of the matrix: from ``src`` to ``dst`` on ``port``.

    ``src``: ``host``, ``outside`` or a container token. ``dst``: ``host`` (the host's address
    facing the outside namespace), ``loopback``, ``outside``, ``gw:<net>`` or ``<ctr>@<net>``.
    ``port``: a number, a name the test gave a host port, or ``eph:<ctr>@<net>:<port>`` for
    the host port the driver picked for that container port. ``family`` 6 probes the IPv6
    addresses of the same places (``loopback``: ::1).
    """

    src: str
    dst: str
    port: int | str
    proto: str = "tcp"
    family: int = 4

    @property
    def label(self) -> str:
        return f"{self.src} -> {self.dst}:{self.port}/{self.proto}" + \
            ("" if self.family == 4 else " over IPv6")


@dataclass
class Observation:
    """What one driver showed at one step of a scenario."""

    rules: dict[str, list[str]]
    matrix: dict[str, str]  # cell label -> "ok <source token>", "refused", "timeout", ...
    expected: dict[str, str]  # cell label -> what the built-in driver is known to give
    facts: dict[str, str] = field(default_factory=dict)
    seen: bool = True  # the whole dump names something of the scenario's


@dataclass(frozen=True)
class RuleDifference:
    """A deliberate difference between pynet's rules and the built-in driver's.

    ``docker`` is a regex matching a whole normalized Docker rule of ``chain``; pynet has
    ``pynet`` instead (a ``re`` template using its groups), or nothing when ``pynet`` is None.
    With ``docker`` None, ``pynet`` is a regex of a rule only pynet has.
    """

    chain: str
    docker: str | None
    pynet: str | None
    why: str


@dataclass(frozen=True)
class CellDifference:
    """A deliberate difference in one cell of one scenario's matrix."""

    scenario: str
    cell: str
    docker: str
    pynet: str
    why: str


@dataclass
class Net:
    """A network one run made."""

    token: str
    name: str
    bridge: str
    subnet: str | None  # None: an IPv6-only network
    gateway: str | None
    subnet6: str | None = None
    gateway6: str | None = None


class Lab:
    """What both runs of a scenario share: the outside host, servers, named host ports."""

    def __init__(self, subnets: Subnets, ports: dict[str, int]) -> None:
        self.subnets = subnets
        subnet = subnets.take()
        self.outside = netcheck.Outside(subnet, subnets.pool, subnets.v6(subnet), subnets.POOL_V6)
        self.ports = ports
        self.servers: list[netcheck.PeerServer] = []

    def open(self) -> None:
        """Build the outside host and its server, and a server on the host."""
        self.outside.create()
        self.servers.append(netcheck.PeerServer(self.outside.ns, self.outside.ip,
                                                self.ports["outsrv"]))
        self.servers.append(netcheck.PeerServer(None, "0.0.0.0", self.ports["hostsrv"]))
        self.servers.append(netcheck.PeerServer(self.outside.ns, self.outside.ip6,
                                                self.ports["outsrv"]))
        self.servers.append(netcheck.PeerServer(None, "::", self.ports["hostsrv"]))

    def close(self) -> None:
        for server in self.servers:
            server.close()
        self.outside.destroy()


class World:
    """One driver's run of a scenario."""

    def __init__(self, lab: Lab, label: str, driver: str) -> None:
        self.lab = lab
        self.label = label
        self.driver = driver
        self.prefix = Settings(name=driver).chain_prefix if label == PYNET else None
        self.res = Resources(lab.subnets)
        self.nets: dict[str, Net] = {}
        self.ctrs: dict[str, str] = {}  # token -> container name
        self.ips: dict[str, dict[str, str]] = {}  # container token -> {network token: IP}
        self.ips6: dict[str, dict[str, str]] = {}  # the same, IPv6
        self.servers: list[netcheck.PeerServer] = []
        self.steps: dict[str, Observation] = {}

    # -- building ------------------------------------------------------------------------

    def name(self, token: str) -> str:
        return f"pt-{self.res.tag}-{self.label[0]}-{token}"

    def network(self, token: str, *args: str) -> Net:
        """``docker network create`` with this run's driver; with ``--ipv6`` (and no
        ``--subnet``) an IPv4 and an IPv6 subnet of the tests' ranges."""
        if "--ipv4=false" in args:
            name = self._ipv6_only(token, args)
        else:
            if "--ipv6" in args and "--subnet" not in args:
                subnet = self.lab.subnets.take()
                args = (*args, "--subnet", str(subnet), "--subnet",
                        str(self.lab.subnets.v6(subnet)))
            name = self.res.network(self.driver, *args, name=self.name(token))
        info = json.loads(docker("network", "inspect", name, "--format", "{{json .}}").stdout)
        options = info.get("Options") or {}
        default = "br-" if self.label == DOCKER else "pn-"
        bridge = options.get("com.docker.network.bridge.name") or default + info["Id"][:12]
        # Without --gateway the IPAM takes the subnet's first address and inspect shows none.
        found = {ipaddress.ip_network(ipam["Subnet"]).version:
                 (ipam["Subnet"], ipam.get("Gateway")
                  or str(ipaddress.ip_network(ipam["Subnet"])[1]))
                 for ipam in info["IPAM"]["Config"]}
        net = Net(token, name, bridge, *found.get(4, (None, None)), *found.get(6, (None, None)))
        wait_for(f"bridge {bridge}", lambda: link(bridge) is not None)
        self.nets[token] = net
        return net

    def _ipv6_only(self, token: str, args: tuple[str, ...]) -> str:
        """An IPv6-only network (``--ipv4=false --ipv6``, options as ``-o k=v`` and
        ``--internal``) through dockerd's API: the tests' CLI is older than the flag."""
        options = dict(args[i + 1].split("=", 1) for i, arg in enumerate(args) if arg == "-o")
        name = self.name(token)
        status, answer = docker_api_post("networks/create", {
            "Name": name, "Driver": self.driver, "EnableIPv4": False, "EnableIPv6": True,
            "Internal": "--internal" in args, "Options": options,
            "IPAM": {"Config": [{"Subnet": str(self.lab.subnets.v6(self.lab.subnets.take()))}]}})
        assert status == 201, f"creating IPv6-only network {name}: {answer}"
        self.res.networks.append(name)
        return name

    def container(self, token: str, net: str, *args: str) -> str:
        """A busybox container serving HTTP on 80 and 9000, started on network ``net``."""
        name = self.res.run("--network", self.nets[net].name, "--stop-timeout", "1", *args,
                            name=self.name(token), command=netcheck.SERVER)
        self.ctrs[token] = name
        self.wait_serving(token)
        return name

    def wait_serving(self, token: str, timeout: float = 30) -> None:
        """Until the container's httpd answers and its addresses are known."""
        def serving() -> bool:
            pid = self.pid(token)
            if pid <= 0:
                return False  # not running (yet, or again after a dockerd restart)
            try:
                found = netcheck.probe_tcp(netcheck.container_ns(pid), "127.0.0.1", 80, 1)
            except OSError:
                return False  # exited between inspect and setns
            return found.startswith("ok")
        wait_for(f"{token} to serve", serving, timeout=timeout)
        self.refresh(token)

    def connect(self, ctr: str, net: str) -> None:
        docker("network", "connect", self.nets[net].name, self.ctrs[ctr])
        self.refresh(ctr)

    def disconnect(self, ctr: str, net: str) -> None:
        docker("network", "disconnect", self.nets[net].name, self.ctrs[ctr])
        self.refresh(ctr)

    def udp_server(self, ctr: str, port: int) -> None:
        """A UDP answering server inside the container (busybox has none)."""
        ns = netcheck.container_ns(self.pid(ctr))
        self.servers.append(netcheck.PeerServer(ns, "0.0.0.0", port, "udp"))

    def close(self) -> None:
        """Servers first (they pin the containers' namespaces), then containers, networks.

        Others restart the shared dockerd now and then; give it time to come back rather than
        leave containers and networks behind.
        """
        for server in self.servers:
            server.close()
        self.servers.clear()
        try:
            wait_for("dockerd to answer", docker_ok, timeout=120, interval=1)
        finally:
            self.res.cleanup()

    # -- looking -------------------------------------------------------------------------

    def pid(self, ctr: str) -> int:
        """The container's process (0 while it is not running)."""
        done = docker("inspect", "--format", "{{.State.Pid}}", self.ctrs[ctr], check=False)
        return int(done.stdout.strip() or 0)

    def refresh(self, ctr: str) -> None:
        """Re-read a container's addresses (after connect, disconnect or a restart)."""
        nets = json.loads(docker("inspect", "--format", "{{json .NetworkSettings.Networks}}",
                                 self.ctrs[ctr]).stdout)
        by_name = {net.name: net.token for net in self.nets.values()}
        self.ips[ctr] = {by_name[name]: entry["IPAddress"] for name, entry in nets.items()
                         if name in by_name and entry.get("IPAddress")}
        self.ips6[ctr] = {by_name[name]: entry["GlobalIPv6Address"]
                          for name, entry in nets.items()
                          if name in by_name and entry.get("GlobalIPv6Address")}

    def tokens(self) -> Tokens:
        """Everything this run made, as tokens shared with the other driver's run."""
        t = Tokens()
        outside = self.lab.outside
        for family in (4, 6):
            t.add(outside.host_ip if family == 4 else outside.host_ip6, "host")
            t.add(outside.ip if family == 4 else outside.ip6, "outside")
            t.add("127.0.0.1" if family == 4 else "::1", "loopback", identifies=False)
        for net in self.nets.values():
            t.add(net.bridge, f"br:{net.token}")
            for subnet, gateway in ((net.subnet, net.gateway), (net.subnet6, net.gateway6)):
                if subnet is not None and gateway is not None:
                    t.add(subnet, f"sub:{net.token}")
                    t.add(gateway, f"gw:{net.token}")
        for ctr in self.ctrs:
            for net, ip in [*self.ips.get(ctr, {}).items(), *self.ips6.get(ctr, {}).items()]:
                t.add(ip, f"{ctr}@{net}")
        return t

    def address(self, where: str, family: int = 4) -> str:
        """The address of a place (see ``Cell``) of IP version ``family``."""
        outside = self.lab.outside
        fixed = {"host": (outside.host_ip, outside.host_ip6),
                 "outside": (outside.ip, outside.ip6), "loopback": ("127.0.0.1", "::1")}
        if where in fixed:
            return fixed[where][family == 6]
        if where.startswith("gw:"):
            net = self.nets[where[3:]]
            gateway = net.gateway if family == 4 else net.gateway6
            assert gateway is not None, f"network {net.token} has no IPv{family}"
            return gateway
        ctr, net_token = where.split("@")
        return (self.ips if family == 4 else self.ips6)[ctr][net_token]

    def namespace(self, src: str) -> str | None:
        if src == "host":
            return None
        if src == "outside":
            return self.lab.outside.ns
        return netcheck.container_ns(self.pid(src))

    def port(self, cell: Cell, save: str) -> int | None:
        if isinstance(cell.port, int):
            return cell.port
        if cell.port in self.lab.ports:
            return self.lab.ports[cell.port]
        _, where, container_port = cell.port.split(":")
        address = self.address(where, cell.family)
        if self.prefix is not None and pynet_firewall() == "nftables":
            return nft_host_port(self.driver, address, int(container_port), cell.proto)
        if self.prefix is None:  # Docker's port map (no DNAT rule with its nftables backend)
            ctr = self.ctrs[where.split("@")[0]]
            shown = docker("port", ctr, f"{container_port}/{cell.proto}", check=False).stdout
            # (the CLI prints [::]:port, or :::port through an older API version)
            anywhere = r"0\.0\.0\.0" if cell.family == 4 else r"(?:\[::\]|::)"
            found = re.search(rf"^{anywhere}:(\d+)$", shown, re.M)
            return int(found.group(1)) if found else None
        chain = ("nat", f"{self.prefix}-DNAT")
        destination = address if cell.family == 4 else f"[{address}]"
        return host_port(save if cell.family == 4 else ip6tables_save(), chain,
                         f"{destination}:{container_port}", cell.proto)

    def rules(self, save: str | None = None) -> dict[str, list[str]]:
        """This run's rules, normalized; a pynet that writes nftables adds its table."""
        rules = scenario_rules(save or stable_iptables_save(30), self.tokens(), self.prefix)
        if any(net.subnet6 for net in self.nets.values()):
            v6 = scenario_rules(ip6tables_save(), self.tokens(), self.prefix)
            rules.update({f"6:{chain}": found for chain, found in v6.items()})
        if self.prefix is not None and pynet_firewall() == "nftables":
            rules["nftables"] = [self.tokens().apply(line) for line in nft_objects(self.driver)]
        return rules

    def matrix(self, cells: dict[Cell, str], save: str) -> dict[str, str]:
        """Probe every cell in parallel; results with addresses as tokens."""
        tokens = self.tokens()

        def one(cell: Cell) -> str:
            port = self.port(cell, save)
            if port is None:
                return "no host port published"
            return netcheck.probe(self.namespace(cell.src), self.address(cell.dst, cell.family),
                                  port, cell.proto)
        found = netcheck.at_once({cell.label: functools.partial(one, cell) for cell in cells})
        return {label: tokens.apply(result) for label, result in found.items()}

    def observe(self, step: str, cells: dict[Cell, str],
                facts: Callable[["World"], dict[str, str]] | None = None) -> Observation:
        """Record rules, matrix and facts as step ``step``; ``cells`` map to Docker's results."""
        save = stable_iptables_save(30)
        both = save + (ip6tables_save() if any(n.subnet6 for n in self.nets.values()) else "")
        seen = Observation(self.rules(save), self.matrix(cells, save),
                           {cell.label: want for cell, want in cells.items()},
                           facts(self) if facts else {}, self.tokens().mentions(both))
        self.steps[step] = seen
        return seen


def run_both(lab: Lab, pynet_driver: str,
             scenario: Callable[[World], Any]) -> dict[str, dict[str, Observation]]:
    """Run ``scenario`` with Docker's bridge driver, then with pynet; each cleans up after."""
    out: dict[str, dict[str, Observation]] = {}
    for label, driver in ((DOCKER, "bridge"), (PYNET, pynet_driver)):
        world = World(lab, label, driver)
        try:
            scenario(world)
        finally:
            world.close()
        out[label] = world.steps
    return out


def expected_rules(docker_rules: dict[str, list[str]],
                   diffs: list[RuleDifference]) -> dict[str, list[str]]:
    """Docker's rules turned into what pynet should have, by the documented differences."""
    out: dict[str, list[str]] = {}
    for chain, rules in docker_rules.items():
        kept: list[str] = []
        for rule in rules:
            for d in diffs:
                found = re.fullmatch(d.docker, rule) if d.chain == chain and d.docker else None
                if found:
                    if d.pynet is not None:
                        kept.append(found.expand(d.pynet))
                    break
            else:
                kept.append(rule)
        out[chain] = kept if chain in ORDERED else sorted(kept)
    return out


def without_extras(pynet_rules: dict[str, list[str]],
                   diffs: list[RuleDifference]) -> dict[str, list[str]]:
    """pynet's rules minus the ones it adds on purpose."""
    extras = [d for d in diffs if d.docker is None and d.pynet is not None]
    return {chain: [r for r in rules
                    if not any(d.chain == chain and re.fullmatch(str(d.pynet), r)
                               for d in extras)]
            for chain, rules in pynet_rules.items()}


def pynet_expectation(scenario: str, expected: dict[str, str],
                      cell_diffs: list[CellDifference]) -> dict[str, str]:
    """The matrix pynet should show: Docker's, changed only by the documented differences."""
    out = dict(expected)
    for d in cell_diffs:
        if d.scenario == scenario and d.cell in out:
            assert out[d.cell] == d.docker, f"difference for {d.cell} expects Docker {d.docker!r}"
            out[d.cell] = d.pynet
    return out


def compare(scenario: str, results: dict[str, dict[str, Observation]],
            rule_diffs: list[RuleDifference], cell_diffs: list[CellDifference]) -> list[str]:
    """Every way the runs disagree with the reference or with each other, as sentences."""
    problems: list[str] = []
    assert results[DOCKER].keys() == results[PYNET].keys(), "the runs took different steps"
    for step, ref in results[DOCKER].items():
        got = results[PYNET][step]
        where = f"{scenario}/{step}"
        rules_compared = firewall_backend() == "iptables"  # nftables: behaviour only
        if rules_compared and not ref.seen:
            problems.append(f"[{where}] no iptables rule of Docker's names the scenario's "
                            "bridges or subnets: the rule view is broken")
        for label, want in ref.expected.items():
            if ref.matrix[label] != want:
                problems.append(f"[{where}] Docker: {label} gave {ref.matrix[label]!r}, the "
                                f"reference says {want!r} (harness or host problem)")
        for label, want in pynet_expectation(scenario, ref.expected, cell_diffs).items():
            if got.matrix[label] != want:
                problems.append(f"[{where}] pynet: {label} gave {got.matrix[label]!r}, "
                                f"expected {want!r}")
        expected = expected_rules(ref.rules, rule_diffs) if rules_compared else {}
        actual = without_extras(got.rules, rule_diffs)
        for chain in sorted(expected):  # the chains both drivers have (ruleview.py)
            a, e = actual.get(chain, []), expected.get(chain, [])
            if a != e:
                diff = "\n".join(difflib.unified_diff(e, a, "expected (Docker, adjusted)",
                                                      "pynet", lineterm=""))
                problems.append(f"[{where}] rules of {chain} differ:\n{diff}")
        if ref.facts != got.facts:
            problems.append(f"[{where}] facts differ: Docker {ref.facts}, pynet {got.facts}")
    return problems
