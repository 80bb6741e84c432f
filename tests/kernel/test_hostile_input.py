"""Hostile input: whatever arrives on the socket, pynet answers with JSON and changes nothing.

Most of it is fuzzed in-process with hypothesis: the real Flask app over a real Driver, moved with
this thread into a throwaway network namespace (``setns`` is per thread, and the driver's netlink
socket, sysctl writes and iptables children all follow the thread), so even a request that turns
out valid by chance only ever touches that namespace. Every reply must be a JSON object - an
``Err`` sentence for anything malformed, never a 500 - and after a refused request the links,
addresses and iptables rules must be exactly as before. A few requests go over the socket of a
real instance to show the worker survives what the HTTP layer sees first (oversized bodies).
"""

import ipaddress
import json
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyroute2 import IPRoute

from lab import Instance, Subnets, hex_id, new_instance, run, wait_for
from lab import network_body as any_network_body
from lab.netns import thread_in_netns
from plugin import protocol
from plugin.app import CONTENT_TYPE, DRIVER_CALLS, MAX_BODY, MAX_ERR, STATELESS_CALLS, create_app
from plugin.config import Settings
from plugin.driver import Driver
from plugin.options import BRIDGE_NAME, HOST_BINDING_IPV4, IFACE_PREFIX, MTU
from plugin.service import build_driver

BASE_POOL = "10.231.255.0/24"   # the standing network's (from the tests' 10.231.224.0/19)
OTHER_POOL = "10.231.254.0/24"  # CreateNetwork mutations: never supersedes the standing one
METHODS = sorted(DRIVER_CALLS) + sorted(STATELESS_CALLS)
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NASTY = [
    "", " ", "pn x", "pn\nx", "pn;x", "pn'x", 'pn"x', "-j ACCEPT", "x -j ACCEPT", "; rm -rf /",
    "$(reboot)", "`id`", "\x00", "\t", "\r\n", "é", "😀", "\u202e", "\ud800", "%s%n",
    "../../etc", "1400\n", " 1400", "١٤٠٠", "0x10", "1e3", "-1", "99999999999999999999",
    "10.0.0.1/24 -j ACCEPT", "fe80::1%eth0 -j ACCEPT", "fe80::1%x;y/64", "02:42:0a:00:00:02\n",
    "ff:ff:ff:ff:ff:ff", "A" * 70_000, "0" * 64, "g" * 64,
]
hostile_text = st.one_of(st.sampled_from(NASTY), st.text(max_size=40),
                         st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=20)
                         .map(lambda t: "pn" + t))
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | hostile_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner,
                                                               max_size=4),
    max_leaves=12)
hostile_value = st.one_of(hostile_text, json_value, st.integers(-2**70, 2**70))




def network_body(network_id: str, pool: str = OTHER_POOL) -> dict[str, Any]:
    """A dual-stack request every field of which is present, to mutate one at a time."""
    return any_network_body(network_id, pool, generic={MTU: "1400"},
                            aux={"a1": pool.replace("0/24", "200/24")},
                            pool_v6=str(Subnets().v6(ipaddress.IPv4Network(pool))))


def endpoint_body(network_id: str, endpoint_id: str) -> dict[str, Any]:
    address_v6 = Subnets().v6(ipaddress.IPv4Network(BASE_POOL))[0x77]
    return {"NetworkID": network_id, "EndpointID": endpoint_id,
            "Interface": {"Address": "10.231.255.77/24", "AddressIPv6": f"{address_v6}/64",
                          "MacAddress": ""},
            "Options": {protocol.PORTMAP: [], protocol.EXPOSED_PORTS: []}}


def portmap_body(network_id: str, endpoint_id: str) -> dict[str, Any]:
    return {"NetworkID": network_id, "EndpointID": endpoint_id,
            "Options": {protocol.PORTMAP: [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "",
                                            "HostPort": 18080, "HostPortEnd": 18080}]}}


# Where a mutation may strike, per request shape (paths into the body).
NETWORK_PATHS = [("NetworkID",), ("Options",), ("Options", "com.docker.network.generic"),
                 ("Options", "com.docker.network.generic", MTU),
                 ("Options", "com.docker.network.generic", BRIDGE_NAME),
                 ("Options", "com.docker.network.generic", HOST_BINDING_IPV4),
                 ("Options", "com.docker.network.generic", IFACE_PREFIX),
                 ("Options", "com.docker.network.internal"), ("IPv4Data",),
                 ("IPv4Data", 0), ("IPv4Data", 0, "Pool"), ("IPv4Data", 0, "Gateway"),
                 ("IPv4Data", 0, "AuxAddresses"), ("IPv4Data", 0, "AuxAddresses", "a1"),
                 ("IPv6Data",), ("IPv6Data", 0), ("IPv6Data", 0, "Pool"),
                 ("IPv6Data", 0, "Gateway")]
ENDPOINT_PATHS = [("EndpointID",), ("Interface",), ("Interface", "Address"),
                  ("Interface", "AddressIPv6"), ("Interface", "MacAddress"), ("Options",),
                  ("Options", protocol.MAC_OPTION), ("Options", protocol.PORTMAP)]
PORT_PATHS = [("Options", protocol.PORTMAP), ("Options", protocol.PORTMAP, 0)] + [
    ("Options", protocol.PORTMAP, 0, key)
    for key in ("Proto", "Port", "HostIP", "HostPort", "HostPortEnd")]


def mutate(body: dict[str, Any], path: tuple[Any, ...], value: Any, drop: bool) -> None:
    """Replace (or remove) what ``path`` points at with ``value``."""
    holder: Any = body
    for step in path[:-1]:
        holder = holder[step]
    if drop and isinstance(holder, dict):
        holder.pop(path[-1], None)
    else:
        holder[path[-1]] = value


@dataclass
class World:
    """The app under test and the namespace its driver lives in."""

    client: FlaskClient
    driver: Driver
    ipr: IPRoute
    network_id: str
    endpoint_id: str
    baseline: tuple[object, ...] = ()

    def call(self, method: str, body: Any = None, raw: bytes | None = None) -> dict[str, Any]:
        """POST as dockerd does (no Content-Type); the reply must be a well-formed JSON object."""
        data = raw if raw is not None else json.dumps(body).encode()
        # Closed as the server closes a reply once sent (which starts the work a call leaves
        # for after its answer: plugin/deferred_rules.py).
        with self.client.post(f"/NetworkDriver.{method}", data=data) as reply:
            assert reply.mimetype == CONTENT_TYPE, reply.data[:300]
            payload = json.loads(reply.data)
        assert isinstance(payload, dict), payload
        err = payload.get("Err")
        assert reply.status_code != 500 and "internal error" not in str(err), err
        if reply.status_code != 200:
            assert err, f"{reply.status_code} without Err"
        if err is not None:
            assert isinstance(err, str) and err.strip() and len(err) <= MAX_ERR + 20, err[:200]
        return payload

    def sysctls(self, links: list[str]) -> list[tuple[str, str | None]]:
        """Every kernel parameter pynet writes, for every link and host-wide."""
        keys = ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding",
                "net/bridge/bridge-nf-call-iptables"]
        for name in links:
            keys += [f"net/ipv4/conf/{name}/route_localnet",
                     f"net/ipv6/conf/{name}/disable_ipv6", f"net/ipv6/conf/{name}/accept_ra"]
        return [(key, self.driver.sysctl.read(key)) for key in keys]

    def snapshot(self) -> tuple[object, ...]:
        """Links with their settings and addresses, routes, the sysctls pynet writes, and every
        iptables rule (no counters)."""
        found = []
        for msg in self.ipr.get_links():
            info = msg.get_attr("IFLA_LINKINFO")
            found.append((msg.get_attr("IFLA_IFNAME"), msg["flags"] & 1,
                          msg.get_attr("IFLA_MTU"), msg.get_attr("IFLA_MASTER"),
                          msg.get_attr("IFLA_IFALIAS"),
                          info.get_attr("IFLA_INFO_KIND") if info else None))
        # Not the kernel's own IPv6 link-local addresses and routes: a veth created up on a
        # bridge can give the bridge carrier for an instant (seen with `ip monitor`), and the
        # kernel then adds the bridge's fe80:: address a second later, whatever pynet does.
        addrs = sorted((m["index"], m.get_attr("IFA_ADDRESS"), m["prefixlen"])
                       for m in self.ipr.get_addr()
                       if not m.get_attr("IFA_ADDRESS").startswith("fe80:"))
        routes = sorted([(m["family"], m.get_attr("RTA_DST"), m["dst_len"],
                          m.get_attr("RTA_OIF"), m.get_attr("RTA_TABLE"))
                         for m in self.ipr.get_routes(family=0)
                         if not str(m.get_attr("RTA_DST")).startswith("fe80:")], key=str)
        rules = [line.split(" [")[0] for tool in ("iptables-save", "ip6tables-save")
                 for line in run([tool]).stdout.splitlines() if line[:1] in "*:-"]
        sysctls = self.sysctls([str(item[0]) for item in found])
        return (sorted(found, key=str), addrs, routes, sysctls, rules, self.driver.ports.held(),
                sorted(e.id for e in self.driver.store.endpoints()),
                sorted(n.id for n in self.driver.store.networks()))

    def assert_unchanged(self) -> None:
        assert self.snapshot() == self.baseline, "a request changed the kernel or the records"


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    """This thread in a throwaway namespace, with a standing network and endpoint in it."""
    state = tempfile.mkdtemp(prefix="pynet-hostile-")
    try:
        with thread_in_netns("pnh"):
            # A new namespace starts with IPv6 forwarding off (IPv4's is the host's).
            Path("/proc/sys/net/ipv6/conf/all/forwarding").write_text("1")
            driver = build_driver(Settings(name=f"pynet-h{secrets.token_hex(3)}",
                                           state_dir=state, call_deadline=5.0))
            driver.ready.set()
            w = World(create_app(driver).test_client(), driver, IPRoute(), hex_id(), hex_id())
            assert "Err" not in w.call("CreateNetwork", network_body(w.network_id, BASE_POOL))
            assert "Err" not in w.call("CreateEndpoint",
                                       endpoint_body(w.network_id, w.endpoint_id))
            # In a fresh namespace the nft tables only appear with the first batch, and that
            # batch carries no jumps into them (iptables.build_batch skips hooks whose built-in
            # chain it did not see); the next sync adds them. Settle that before the baseline.
            driver.sync_firewall()
            w.baseline = w.snapshot()
            yield w
            w.ipr.close()
            driver.close()
    finally:
        shutil.rmtree(state, ignore_errors=True)


def undo(w: World, method: str, body: dict[str, Any], reply: dict[str, Any]) -> None:
    """A mutation that happened to be valid did its work: undo it before comparing."""
    if "Err" in reply:
        return
    if method == "CreateNetwork":
        w.call("DeleteNetwork", {"NetworkID": body["NetworkID"]})
    elif method == "CreateEndpoint":
        w.call("DeleteEndpoint", {"NetworkID": body["NetworkID"],
                                  "EndpointID": body["EndpointID"]})
    elif method == "ProgramExternalConnectivity":
        w.call("RevokeExternalConnectivity", {"NetworkID": body["NetworkID"],
                                              "EndpointID": body["EndpointID"]})
    w.driver.reap()  # deletes are answered first and finished by the reaper


@FUZZ
@given(method=st.sampled_from(METHODS), body=json_value)
def test_any_json_gets_a_json_reply_and_changes_nothing(world: World, method: str,
                                                        body: Any) -> None:
    world.call(method, body)
    world.assert_unchanged()


@FUZZ
@given(method=st.sampled_from(METHODS + ["Nope", "X" * 300]), raw=st.binary(max_size=300))
def test_any_bytes_get_a_json_reply(world: World, method: str, raw: bytes) -> None:
    world.call(method, raw=raw)
    world.assert_unchanged()


@FUZZ
@given(path=st.sampled_from(NETWORK_PATHS), value=hostile_value, drop=st.booleans())
def test_create_network_with_one_bad_field(world: World, path: tuple[Any, ...], value: Any,
                                           drop: bool) -> None:
    body = network_body(hex_id())
    mutate(body, path, value, drop)
    undo(world, "CreateNetwork", body, world.call("CreateNetwork", body))
    world.assert_unchanged()


@FUZZ
@given(path=st.sampled_from(ENDPOINT_PATHS), value=hostile_value, drop=st.booleans())
def test_create_endpoint_with_one_bad_field(world: World, path: tuple[Any, ...], value: Any,
                                            drop: bool) -> None:
    body = endpoint_body(world.network_id, hex_id())
    body["Interface"]["Address"] = "10.231.255.78/24"
    mutate(body, path, value, drop)
    undo(world, "CreateEndpoint", body, world.call("CreateEndpoint", body))
    world.assert_unchanged()


@FUZZ
@given(method=st.sampled_from(["ProgramExternalConnectivity", "Join"]),
       path=st.sampled_from(PORT_PATHS), value=hostile_value, drop=st.booleans())
def test_port_bindings_with_one_bad_field(world: World, method: str, path: tuple[Any, ...],
                                          value: Any, drop: bool) -> None:
    body = portmap_body(world.network_id, world.endpoint_id)
    mutate(body, path, value, drop)
    undo(world, method, body, world.call(method, body))
    world.assert_unchanged()


@FUZZ
@given(key=st.sampled_from([BRIDGE_NAME, MTU, HOST_BINDING_IPV4, IFACE_PREFIX]),
       valid=st.sampled_from(["pnfz0", "1400", "127.0.0.1", "eth"]),
       junk=st.sampled_from([" ", "\n", "'", '"', ";", " -j ACCEPT", ";reboot", "\t", "`",
                             "$(x)", "\\", "%0", "é", "\x00"]),
       front=st.booleans())
def test_option_values_with_shell_or_rule_syntax_are_refused(
        world: World, key: str, valid: str, junk: str, front: bool) -> None:
    body = network_body(hex_id())
    body["Options"]["com.docker.network.generic"][key] = junk + valid if front else valid + junk
    reply = world.call("CreateNetwork", body)
    assert key in reply.get("Err", ""), reply
    world.assert_unchanged()


@pytest.mark.parametrize("text", ["fe80::1%eth0", "fe80::1%x -j ACCEPT;"])
def test_zone_ids_are_refused(world: World, text: str) -> None:
    body = network_body(hex_id())
    body["IPv6Data"] = [{"AddressSpace": "LocalDefault", "Pool": "fd00:1::/64",
                         "Gateway": f"{text}/64"}]
    assert "zone id" in world.call("CreateNetwork", body)["Err"]
    ports = portmap_body(world.network_id, world.endpoint_id)
    ports["Options"][protocol.PORTMAP][0]["HostIP"] = text
    assert "zone id" in world.call("ProgramExternalConnectivity", ports)["Err"]
    world.assert_unchanged()


def test_deeply_nested_json_is_refused_not_a_500(world: World) -> None:
    raw = b"[" * 100_000 + b"]" * 100_000
    assert "nested too deeply" in world.call("CreateNetwork", raw=raw)["Err"]


def test_huge_strings_give_a_short_err(world: World) -> None:
    body = network_body(hex_id())
    body["Options"]["com.docker.network.generic"][MTU] = "9" * 500_000
    assert len(world.call("CreateNetwork", body)["Err"]) <= MAX_ERR + 20
    world.assert_unchanged()


def test_body_over_the_limit_is_refused_with_json(world: World) -> None:
    reply = world.client.post("/NetworkDriver.CreateNetwork", data=b" " * (MAX_BODY + 1))
    assert reply.status_code == 413 and "Err" in json.loads(reply.data)
    world.assert_unchanged()


def test_empty_body_says_run_again(world: World) -> None:
    for method in DRIVER_CALLS:
        assert "run the command again" in world.call(method, raw=b"")["Err"]


# -- over the socket of a real instance --------------------------------------------------------

@pytest.fixture(scope="module")
def served() -> Iterator[Instance]:
    inst = new_instance()
    inst.start()
    yield inst
    inst.stop()
    run(inst.argv("uninstall"), check=False)
    shutil.rmtree(inst.state_dir, ignore_errors=True)
    Path(inst.log_path).unlink(missing_ok=True)


def worker_pid(inst: Instance) -> int:
    assert inst.proc is not None
    children = run(["pgrep", "-P", str(inst.proc.pid)]).stdout.split()
    assert len(children) == 1, children
    return int(children[0])


def post(inst: Instance, method: str, data: bytes, *headers: str) -> tuple[int, dict[str, Any]]:
    argv = ["curl", "-s", "--max-time", "20", "--unix-socket", inst.socket, "-X", "POST",
            "-H", "Content-Type:", "--data-binary", "@-", "-o", "-", "-w", "\n%{http_code}"]
    for h in headers:
        argv += ["-H", h]
    done = subprocess.run([*argv, f"http://x/NetworkDriver.{method}"], input=data,
                          capture_output=True, timeout=30)
    body, _, code = done.stdout.rpartition(b"\n")
    return int(code), json.loads(body)


@pytest.mark.parametrize("data,headers,status", [
    (b"{not json", (), 200),
    (b"", (), 200),
    (b'{"NetworkID": "' + b"a" * 64 + b'", "IPv4Data": "\xff\xfe"}', (), 200),
    (b"[" * 50_000, (), 200),
    (b"x" * (MAX_BODY + 10), (), 413),
    (b"x" * (MAX_BODY + 10), ("Transfer-Encoding: chunked",), 413),
])
def test_socket_answers_json_and_the_worker_survives(served: Instance, data: bytes,
                                                     headers: tuple[str, ...],
                                                     status: int) -> None:
    before = worker_pid(served)
    code, payload = post(served, "CreateNetwork", data, *headers)
    assert code == status and payload.get("Err"), (code, payload)
    wait_for("the instance to answer", served.answers)
    assert worker_pid(served) == before, "the worker died and was replaced"
