"""Run-time settings, from command-line flags with environment fallbacks.

The managed plugin can only pass settings as environment variables (``docker plugin set``), so
every flag has a ``PYNET_*`` twin.
"""

import os
import re
from dataclasses import dataclass

from plugin.errors import InvalidRequest

_NAME = re.compile(r"[a-z][a-z0-9-]{0,19}")


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
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)  # type: ignore[arg-type]
    if not _NAME.fullmatch(settings.name):
        raise InvalidRequest(f"plugin name {settings.name!r} is invalid: use 1-20 lower-case "
                             "letters, digits or '-', starting with a letter")
    if settings.socket_name and os.path.basename(settings.socket_name) != settings.socket_name:
        raise InvalidRequest(f"PYNET_SOCKET_NAME {settings.socket_name!r} must be a file name, "
                             "not a path; the directory is PYNET_SOCKET_DIR")
    if settings.log_level not in ("debug", "info", "warning", "error"):
        raise InvalidRequest(f"log level {settings.log_level!r} is invalid: use debug, info, "
                             "warning or error")
    return settings


def _float(key: str, default: float) -> float:
    text = os.environ.get(key)
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise InvalidRequest(f"{key}={text!r} is not a number of seconds") from None
