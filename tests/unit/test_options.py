"""Network options are parsed the way Docker's bridge driver parses them."""

import ipaddress

import pytest

from plugin.errors import InvalidRequest
from plugin.options import (
    BRIDGE_NAME,
    ENABLE_ICC,
    ENABLE_IP_MASQUERADE,
    HOST_BINDING_IPV4,
    IFACE_PREFIX,
    MTU,
    NetworkOptions,
    parse_go_bool,
    parse_network_options,
)


def generic(**opts: str) -> dict:
    return {"com.docker.network.generic": dict(opts), "com.docker.network.enable_ipv6": False}


@pytest.mark.parametrize("text", ["1", "t", "T", "TRUE", "true", "True"])
def test_go_true_spellings(text: str) -> None:
    assert parse_go_bool(ENABLE_ICC, text) is True


@pytest.mark.parametrize("text", ["0", "f", "F", "FALSE", "false", "False"])
def test_go_false_spellings(text: str) -> None:
    assert parse_go_bool(ENABLE_ICC, text) is False


@pytest.mark.parametrize("text", ["maybe", "yes", "tRuE", "", " true"])
def test_bad_bool_names_key_and_value(text: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_go_bool(ENABLE_ICC, text)
    assert f"failed to parse {ENABLE_ICC} value: {text!r}" in str(err.value)


def test_defaults_match_the_bridge_driver() -> None:
    assert parse_network_options(generic()) == NetworkOptions()


def test_every_known_option() -> None:
    opts = parse_network_options({
        **generic(**{BRIDGE_NAME: "pn-x", ENABLE_ICC: "false", ENABLE_IP_MASQUERADE: "0",
                     HOST_BINDING_IPV4: "127.0.0.1", MTU: "1400", IFACE_PREFIX: "ceth"}),
        "com.docker.network.internal": True})
    assert opts == NetworkOptions(bridge_name="pn-x", enable_icc=False,
                                  enable_ip_masquerade=False,
                                  host_binding_ipv4=ipaddress.IPv4Address("127.0.0.1"),
                                  mtu=1400, iface_prefix="ceth", internal=True)


def test_sixteen_character_bridge_name_is_refused_with_its_length() -> None:
    with pytest.raises(InvalidRequest, match="16 characters; Linux allows at most 15"):
        parse_network_options(generic(**{BRIDGE_NAME: "abcdefghijklmnop"}))


@pytest.mark.parametrize("name", ["a b", "a/b", "a:b", "-x", "x;y", "x\ny", "br'0", "", "é"])
def test_bridge_names_the_kernel_or_iptables_would_misread_are_refused(name: str) -> None:
    with pytest.raises(InvalidRequest, match="bridge name"):
        parse_network_options(generic(**{BRIDGE_NAME: name}))


@pytest.mark.parametrize("value,reason", [("abc", "whole number"), ("-1", "out of range"),
                                          ("67", "out of range"), ("65536", "out of range"),
                                          ("1400.5", "whole number")])
def test_bad_mtu_is_refused(value: str, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        parse_network_options(generic(**{MTU: value}))


def test_mtu_zero_means_default() -> None:
    assert parse_network_options(generic(**{MTU: "0"})).mtu == 0


def test_bad_host_binding_is_refused() -> None:
    with pytest.raises(InvalidRequest, match=HOST_BINDING_IPV4):
        parse_network_options(generic(**{HOST_BINDING_IPV4: "localhost"}))


def test_unknown_options_are_accepted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    assert parse_network_options(generic(foo="bar")) == NetworkOptions()
    assert "ignoring unknown network option 'foo'='bar'" in caplog.text


def test_non_string_option_value_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="must be a string"):
        parse_network_options({"com.docker.network.generic": {MTU: 1400}})


def test_internal_must_be_a_bool() -> None:
    with pytest.raises(InvalidRequest, match="JSON boolean"):
        parse_network_options({"com.docker.network.internal": "true"})


def test_option_key_in_an_error_carries_no_raw_newline() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_network_options({"com.docker.network.generic": {"x\nFAKE log line": 1}})
    assert "\n" not in str(err.value)
    assert "'x\\nFAKE log line'" in str(err.value)
