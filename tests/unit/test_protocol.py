"""Requests are validated completely before any work starts."""

import base64
import ipaddress

import pytest

from plugin import protocol
from plugin.errors import InvalidRequest

NID = "9110c8c19f1150c07b4fbe6a8c713a833012546a44c40a8484f100f19e25d333"
EID = "1b354796f33ed9176ffb804ec09d44b1b0716db3d4641c28d02e49eb4f24e162"


def network_body(**over: object) -> dict:
    body = {
        "NetworkID": NID,
        "Options": {"com.docker.network.enable_ipv6": False,
                    "com.docker.network.generic": {"com.docker.network.driver.mtu": "1400"}},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.231.30.0/24",
                      "Gateway": "10.231.30.1/24",
                      "AuxAddresses": {"a1": "10.231.30.200/24"}}],
        "IPv6Data": [],
    }
    body.update(over)
    return body


def test_create_network_as_dockerd_sends_it() -> None:
    req = protocol.CreateNetwork.parse(network_body())
    assert req.network_id == NID
    assert req.ipv4.gateway == ipaddress.ip_interface("10.231.30.1/24")
    assert req.ipv4.aux_addresses["a1"] == ipaddress.ip_interface("10.231.30.200/24")
    assert req.options.mtu == 1400
    assert req.ipv6 is None


def test_two_ipv4_pools_are_refused() -> None:
    pools = network_body()["IPv4Data"] * 2
    with pytest.raises(InvalidRequest, match="multiple subnets"):
        protocol.CreateNetwork.parse(network_body(IPv4Data=pools))


@pytest.mark.parametrize("nid", ["", "abc", NID.upper(), NID + "0", "g" * 64, 5])
def test_network_id_must_be_64_hex(nid: object) -> None:
    with pytest.raises(InvalidRequest, match="NetworkID"):
        protocol.CreateNetwork.parse(network_body(NetworkID=nid))


@pytest.mark.parametrize("pool", ["10.231.30.0/33", "nonsense", "fd00::/64", ""])
def test_bad_pool_is_refused_naming_it(pool: str) -> None:
    data = [{"Pool": pool, "Gateway": "10.231.30.1/24"}]
    with pytest.raises(InvalidRequest, match="Pool"):
        protocol.CreateNetwork.parse(network_body(IPv4Data=data))


def test_gateway_outside_pool_is_refused() -> None:
    data = [{"Pool": "10.231.30.0/24", "Gateway": "10.231.31.1/24"}]
    with pytest.raises(InvalidRequest, match="outside the pool"):
        protocol.CreateNetwork.parse(network_body(IPv4Data=data))


def endpoint_body(**iface: object) -> dict:
    return {"NetworkID": NID, "EndpointID": EID,
            "Interface": {"Address": "10.231.30.2/24", "AddressIPv6": "", "MacAddress": "",
                          **iface},
            "Options": {"com.docker.network.portmap": [], "com.docker.network.endpoint."
                        "exposedports": []}}


def test_endpoint_without_mac() -> None:
    req = protocol.CreateEndpoint.parse(endpoint_body())
    assert req.address == ipaddress.ip_interface("10.231.30.2/24")
    assert req.mac is None


def test_mac_from_interface_is_normalised() -> None:
    assert protocol.CreateEndpoint.parse(endpoint_body(MacAddress="02:00:00:00:30:AB")).mac \
        == "02:00:00:00:30:ab"


def test_mac_from_base64_option() -> None:
    body = endpoint_body()
    body["Options"][protocol.MAC_OPTION] = base64.b64encode(bytes([2, 0, 0, 0, 0x30, 5])).decode()
    assert protocol.CreateEndpoint.parse(body).mac == "02:00:00:00:30:05"


@pytest.mark.parametrize("mac", ["01:00:5e:00:00:01", "02:00:00:00:30", "zz:00:00:00:00:00",
                                 "02-00-00-00-00-01"])
def test_bad_or_multicast_mac_is_refused(mac: str) -> None:
    with pytest.raises(InvalidRequest, match="MacAddress"):
        protocol.CreateEndpoint.parse(endpoint_body(MacAddress=mac))


def binding(**over: object) -> dict:
    b = {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}
    b.update(over)
    return b


def program(*bindings: dict) -> protocol.ProgramExternalConnectivity:
    return protocol.ProgramExternalConnectivity.parse(
        {"NetworkID": NID, "EndpointID": EID,
         "Options": {"com.docker.network.portmap": list(bindings)}})


def test_port_bindings_are_parsed() -> None:
    req = program(binding(), binding(Proto=17, HostIP="127.0.0.1", HostPort=0, HostPortEnd=0),
                  binding(Proto=132, HostPort=9000, HostPortEnd=9010))
    assert [(b.proto, b.host_port, b.host_port_end) for b in req.bindings] == [
        ("tcp", 8080, 8080), ("udp", 0, 0), ("sctp", 9000, 9010)]
    assert req.bindings[1].host_ip == ipaddress.ip_address("127.0.0.1")


@pytest.mark.parametrize("over,match", [
    ({"Proto": 1}, "protocol number 1"), ({"Proto": "6"}, "Proto"),
    ({"Port": 0}, "Port 0"), ({"Port": 70000}, "Port 70000"),
    ({"HostPort": 9000, "HostPortEnd": 8000}, "ends before"),
    ({"HostIP": "300.1.1.1"}, "HostIP"), ({"Port": True}, "Port"),
])
def test_bad_bindings_are_refused(over: dict, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        program(binding(**over))


def test_body_must_be_an_object() -> None:
    with pytest.raises(InvalidRequest, match="JSON object"):
        protocol.NetworkRef.parse([NID])


def ipam(pool: str, gateway: str = "", **aux: str) -> list[dict]:
    entry: dict = {"AddressSpace": "LocalDefault", "Pool": pool, "AuxAddresses": aux}
    if gateway:
        entry["Gateway"] = gateway
    return [entry]


def v6_body(pool: str, gateway: str = "", **aux: str) -> dict:
    return network_body(IPv6Data=ipam(pool, gateway, **aux))


@pytest.mark.parametrize("body,wanted", [
    (network_body(IPv4Data=ipam("10.9.0.0/24", "10.9.0.1/1")), "10.9.0.1/24"),
    (network_body(IPv4Data=ipam("10.9.0.0/24", "10.9.0.1/30")), "10.9.0.1/24"),
    (network_body(IPv4Data=ipam("10.9.0.0/24", "10.9.0.1")), "10.9.0.1/24"),
    (v6_body("fd00:1::/64", "fd00:1::1/8"), "fd00:1::1/64"),
])
def test_gateway_with_another_prefix_than_its_pool_is_refused(body: dict, wanted: str) -> None:
    with pytest.raises(InvalidRequest, match="Gateway .* has prefix length .* but its pool") as err:
        protocol.CreateNetwork.parse(body).check_host_safety()
    assert f"give it with the pool's prefix, as dockerd does: {wanted}" in str(err.value)


@pytest.mark.parametrize("body", [
    network_body(IPv4Data=ipam("10.9.0.0/24", "10.9.0.1/24", a1="10.9.0.200/8")),
    v6_body("fd00:1::/64", "fd00:1::1/64", a1="fd00:1::200/0"),
])
def test_aux_address_with_another_prefix_than_its_pool_is_refused(body: dict) -> None:
    with pytest.raises(InvalidRequest, match="aux address 'a1' .* has prefix length"):
        protocol.CreateNetwork.parse(body).check_host_safety()


def test_aux_address_without_prefix_is_taken_as_it_is() -> None:
    req = protocol.CreateNetwork.parse(
        network_body(IPv4Data=ipam("10.9.0.0/24", "10.9.0.1/24", a1="10.9.0.200")))
    assert req.ipv4.aux_addresses["a1"].ip == ipaddress.ip_address("10.9.0.200")


@pytest.mark.parametrize("pool,forbidden", [
    ("127.0.0.0/8", "127.0.0.0/8"), ("127.1.2.0/24", "127.0.0.0/8"),
    ("169.254.169.0/24", "169.254.0.0/16"), ("169.0.0.0/8", "169.254.0.0/16"),
    ("224.0.0.0/24", "224.0.0.0/4"), ("239.255.0.0/16", "224.0.0.0/4"),
    ("0.0.0.0/8", "0.0.0.0/8"), ("0.1.0.0/16", "0.0.0.0/8"), ("0.0.0.0/1", "0.0.0.0/8"),
    ("240.0.0.0/4", "240.0.0.0/4"), ("255.255.255.0/24", "240.0.0.0/4"),
])
def test_ipv4_pool_over_a_host_range_is_refused(pool: str, forbidden: str) -> None:
    with pytest.raises(InvalidRequest, match=f"Pool {pool} overlaps {forbidden} ") as err:
        protocol.CreateNetwork.parse(network_body(
            IPv4Data=ipam(pool, f"{ipaddress.ip_network(pool)[1]}/{pool.split('/')[1]}"))
        ).check_host_safety()
    assert "use a private range such as 10.0.0.0/8" in str(err.value)


@pytest.mark.parametrize("pool,forbidden", [
    ("::1/128", "::1/128"), ("::/128", "::/128"), ("::/96", "::/128"),
    ("fe80::/64", "fe80::/10"), ("fe80::/10", "fe80::/10"),
    ("ff02::/16", "ff00::/8"), ("ff00::/8", "ff00::/8"),
])
def test_ipv6_pool_over_a_host_range_is_refused(pool: str, forbidden: str) -> None:
    with pytest.raises(InvalidRequest, match=f"Pool {pool} overlaps {forbidden} "):
        protocol.CreateNetwork.parse(v6_body(pool)).check_host_safety()


@pytest.mark.parametrize("body", [network_body(IPv4Data=ipam("0.0.0.0/0", "10.0.0.1/0")),
                                  v6_body("::/0", "fd00::1/0")])
def test_pool_of_every_address_is_refused(body: dict) -> None:
    with pytest.raises(InvalidRequest, match="is the whole IPv. address space: .* default route"):
        protocol.CreateNetwork.parse(body).check_host_safety()


@pytest.mark.parametrize("forbidden", [net for net, _ in protocol.FORBIDDEN_POOLS],
                         ids=str)
def test_every_forbidden_range_is_refused(
        forbidden: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    with pytest.raises(InvalidRequest, match=f"overlaps {forbidden} "):
        protocol.check_pool_is_safe(forbidden)


@pytest.mark.parametrize("pool,gateway", [
    ("10.0.0.0/8", "10.0.0.1/8"), ("10.231.30.0/24", "10.231.30.1/24"),
    ("172.16.0.0/12", "172.16.0.1/12"), ("172.18.0.0/16", "172.18.0.1/16"),
    ("192.168.0.0/16", "192.168.0.1/16"), ("192.168.1.0/24", "192.168.1.1/24"),
])
def test_private_ipv4_pools_are_accepted(pool: str, gateway: str) -> None:
    req = protocol.CreateNetwork.parse(network_body(IPv4Data=ipam(pool, gateway)))
    assert req.ipv4.pool == ipaddress.ip_network(pool)
    assert req.ipv4.gateway == ipaddress.ip_interface(gateway)


@pytest.mark.parametrize("pool,gateway", [("fd00::/64", "fd00::1/64"),
                                          ("2001:db8::/64", "2001:db8::1/64"),
                                          ("fd12:3456:789a::/48", "fd12:3456:789a::1/48")])
def test_ordinary_ipv6_pools_are_accepted(pool: str, gateway: str) -> None:
    req = protocol.CreateNetwork.parse(v6_body(pool, gateway, a1=gateway.replace("::1/", "::9/")))
    assert req.ipv6 is not None and req.ipv6.gateway == ipaddress.ip_interface(gateway)
