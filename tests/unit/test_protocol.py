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
    assert req.body == network_body()


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
