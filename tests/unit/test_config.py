"""Settings that would make names the kernel or iptables refuse fail at start, not mid-call."""

from collections.abc import Iterator

import pytest

from plugin import config
from plugin.config import CHAIN_NAME_MAX, SOCKET_PATH_MAX, from_env
from plugin.errors import InvalidRequest
from plugin.firewall.rules import Chains


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings from defaults and each test's flags only, not the developer's environment."""
    for key in ("PYNET_NAME", "PYNET_SOCKET_DIR", "PYNET_SOCKET_NAME", "PYNET_LOG_LEVEL",
                "LOG_LEVEL"):
        monkeypatch.delenv(key, raising=False)
    yield


def longest_chain_suffix() -> int:
    """What the longest chain adds to the prefix, asked of Chains as pynet does."""
    return max(len(chain) - 1 for names in Chains("X").owned().values() for chain in names)


def test_default_settings_pass() -> None:
    assert from_env().name == "pynet"


def test_longest_name_whose_chains_fit_is_accepted() -> None:
    name = "a" * min(20, CHAIN_NAME_MAX - longest_chain_suffix())
    assert from_env(name=name).name == name


def test_name_whose_chain_is_too_long_fails_naming_chain_length_limit_and_fix() -> None:
    fits = CHAIN_NAME_MAX - longest_chain_suffix()
    name = "a" * (fits + 1)
    with pytest.raises(InvalidRequest) as err:
        from_env(name=name)
    message = str(err.value)
    assert f"iptables chain name '{name.upper()}-" in message
    assert f"is {CHAIN_NAME_MAX + 1} characters; iptables allows at most {CHAIN_NAME_MAX}" \
        in message
    assert f"use a PYNET_NAME (--name) of at most {fits} characters" in message


def test_name_from_the_environment_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYNET_NAME", "a" * 20)
    with pytest.raises(InvalidRequest, match="iptables chain name 'AAAAAAAAAAAAAAAAAAAA-"):
        from_env()


def test_chains_are_asked_of_chains_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    class MoreChains(Chains):
        def owned(self) -> dict[str, list[str]]:
            return {**super().owned(), "mangle": [f"{self.prefix}-A-VERY-LONG-NEW-CHAIN"]}

    monkeypatch.setattr(config, "Chains", MoreChains)
    with pytest.raises(InvalidRequest, match="'PYNET-XY-A-VERY-LONG-NEW-CHAIN' is 30 characters"):
        from_env(name="pynet-xy")


def test_link_alias_is_checked_at_its_longest() -> None:
    alias = next(n for n in config.derived_names(from_env()) if n.what == "link alias")
    assert alias.value.startswith("pynet:pynet:") and alias.length == len("pynet:pynet:") + 64


def test_socket_path_too_long_for_a_unix_socket_fails() -> None:
    directory = "/run/" + "d" * 100
    with pytest.raises(InvalidRequest) as err:
        from_env(socket_dir=directory)
    length = len(f"{directory}/pynet.sock")
    assert f"socket path '{directory}/pynet.sock' is {length} bytes; a Unix socket allows " \
        f"at most {SOCKET_PATH_MAX}" in str(err.value)
    assert f"by {length - SOCKET_PATH_MAX} bytes" in str(err.value)
