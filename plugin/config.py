"""Run-time settings, from command-line flags with environment fallbacks.

The managed plugin can only pass settings as environment variables (``docker plugin set``), so
every flag has a ``PYNET_*`` twin.
"""

import os
import re
from dataclasses import dataclass
from typing import NamedTuple

from plugin.errors import InvalidRequest
from plugin.firewall.choice import CHOICES
from plugin.firewall.rules import Chains
from plugin.protocol import ID_LENGTH

_NAME = re.compile(r"[a-z][a-z0-9-]{0,19}")

# Limits on the names pynet builds from its settings. iptables refuses a chain name of
# XT_EXTENSION_MAXNAMELEN (29) characters or more, the NUL included (x_tables.h); the kernel caps
# a link alias at IFALIASZ - 1 = 255 (if.h, rtnetlink's policy); a Unix socket path must fit
# sun_path, 108 bytes with its NUL (un.h).
CHAIN_NAME_MAX = 28
LINK_ALIAS_MAX = 255
SOCKET_PATH_MAX = 107


@dataclass(frozen=True)
class Settings:
    """Where pynet listens, keeps state and finds the kernel, and how it behaves."""

    name: str = "pynet"
    state_dir: str = "/var/lib/pynet"
    socket_dir: str = "/run/docker/plugins"
    sysctl_root: str = "/proc/sys"
    log_level: str = "info"
    reconcile_interval: float = 5.0
    call_deadline: float = 10.0
    socket_name: str = ""
    firewall_backend: str = "auto"  # see plugin/firewall/choice.py

    @property
    def socket_path(self) -> str:
        """The Unix socket dockerd dials: ``<name>.sock``, unless ``socket_name`` is fixed.

        A managed plugin's socket name is fixed in its config.json, yet a second (test)
        instance of it needs its own name so that its chains and links stay apart.
        """
        return os.path.join(self.socket_dir, self.socket_name or f"{self.name}.sock")

    @property
    def chain_prefix(self) -> str:
        """iptables chain prefix: instances with other names never touch each other's chains."""
        return self.name.upper()

    @property
    def alias_prefix(self) -> str:
        """Alias marking links this instance created."""
        return f"pynet:{self.name}:"


def from_env(**overrides: object) -> Settings:
    """Settings from PYNET_* variables, then ``overrides`` (flags given on the command line)."""
    env = os.environ
    values: dict[str, object] = {
        "name": env.get("PYNET_NAME", "pynet"),
        "state_dir": env.get("PYNET_STATE_DIR", "/var/lib/pynet"),
        "socket_dir": env.get("PYNET_SOCKET_DIR", "/run/docker/plugins"),
        "sysctl_root": env.get("PYNET_SYSCTL_ROOT", "/proc/sys"),
        "log_level": env.get("PYNET_LOG_LEVEL", env.get("LOG_LEVEL", "info")).lower(),
        "reconcile_interval": _float("PYNET_RECONCILE_INTERVAL", 5.0),
        "call_deadline": _float("PYNET_CALL_DEADLINE", 10.0),
        "socket_name": env.get("PYNET_SOCKET_NAME", ""),
        "firewall_backend": env.get("PYNET_FIREWALL_BACKEND", "auto"),
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)  # type: ignore[arg-type]
    if not _NAME.fullmatch(settings.name):
        raise InvalidRequest(f"plugin name {settings.name!r} is invalid: use 1-20 lower-case "
                             "letters, digits or '-', starting with a letter")
    check_derived_names(settings)
    if settings.socket_name and os.path.basename(settings.socket_name) != settings.socket_name:
        raise InvalidRequest(f"PYNET_SOCKET_NAME {settings.socket_name!r} must be a file name, "
                             "not a path; the directory is PYNET_SOCKET_DIR")
    if settings.firewall_backend not in CHOICES:
        raise InvalidRequest(f"firewall backend {settings.firewall_backend!r} is invalid: use "
                             f"{', '.join(CHOICES)} (PYNET_FIREWALL_BACKEND)")
    if settings.log_level not in ("debug", "info", "warning", "error"):
        raise InvalidRequest(f"log level {settings.log_level!r} is invalid: use debug, info, "
                             "warning or error")
    return settings


class BoundedName(NamedTuple):
    """A name built from the settings, what bounds it, and what to do when it is too long."""

    what: str
    value: str
    length: int
    limit: int
    unit: str  # what length and limit count: "characters" or "bytes"
    authority: str  # who refuses a longer one
    remedy: str


def _from_name(settings: Settings, what: str, value: str, authority: str,
               limit: int) -> BoundedName:
    """A name built from PYNET_NAME; the remedy is the longest PYNET_NAME that fits."""
    longest = len(settings.name) - (len(value) - limit)
    return BoundedName(what, value, len(value), limit, "characters", authority,
                    f"it is built from PYNET_NAME {settings.name!r}; use a PYNET_NAME (--name) of "
                    f"at most {longest} characters")


def derived_names(settings: Settings) -> list[BoundedName]:
    """Every name pynet builds from its settings that the kernel or iptables bounds.

    The chains are asked of ``Chains`` itself, so a chain added there is checked too; the
    link alias is the longest one pynet makes, its prefix and a full id."""
    chains = [_from_name(settings, "iptables chain name", chain, "iptables", CHAIN_NAME_MAX)
              for names in Chains(settings.chain_prefix).owned().values() for chain in names]
    alias = _from_name(settings, "link alias", settings.alias_prefix + "0" * ID_LENGTH, "Linux",
                       LINK_ALIAS_MAX)
    path = settings.socket_path
    size = len(os.fsencode(path))
    socket = BoundedName("socket path", path, size, SOCKET_PATH_MAX, "bytes", "a Unix socket",
                      f"shorten PYNET_SOCKET_DIR (--socket-dir) or the socket's name "
                      f"(PYNET_SOCKET_NAME, else PYNET_NAME) by {size - SOCKET_PATH_MAX} bytes")
    return [*chains, alias, socket]


def check_derived_names(settings: Settings) -> Settings:
    """Refuse at start the settings whose names the kernel or iptables would refuse later,
    half-way through setting up a network."""
    for name in derived_names(settings):
        if name.length > name.limit:
            raise InvalidRequest(f"{name.what} {name.value!r:.200} is {name.length} {name.unit}; "
                                 f"{name.authority} allows at most {name.limit}: {name.remedy}")
    return settings


def _float(key: str, default: float) -> float:
    text = os.environ.get(key)
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise InvalidRequest(f"{key}={text!r} is not a number of seconds") from None
