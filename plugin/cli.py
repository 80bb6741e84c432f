"""``pynet serve | status | reconcile [--dry-run] | forget NETWORK | uninstall``."""

import argparse
import logging
import sys

from plugin import server
from plugin.config import from_env
from plugin.errors import PynetError


def setup_logging(level: str) -> None:
    """One line per event on stdout: dockerd files a managed plugin's stderr as errors."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pyroute2 logs every netlink message at debug: LOG_LEVEL=debug is for pynet's decisions.
    logging.getLogger("pyroute2").setLevel(max(logging.INFO, root.level))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pynet`` command."""
    # The instance's options go before or after the command ("pynet serve --name X" as well
    # as "pynet --name X serve"); after it they are only taken when given.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", help="driver name and socket file name (default pynet)")
    common.add_argument("--state-dir", help="where records live (default /var/lib/pynet)")
    common.add_argument("--socket-dir", help="where the socket goes (/run/docker/plugins)")
    common.add_argument("--sysctl-root", help="writable /proc/sys tree")
    common.add_argument("--log-level", help="debug, info, warning or error")
    common.add_argument("--firewall-backend", help="auto (default), iptables or nftables")
    after = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for action in common._actions:
        after.add_argument(*action.option_strings, help=action.help)
    parser = argparse.ArgumentParser(prog="pynet", description=__doc__, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", parents=[after], help="serve the driver in the foreground")
    sub.add_parser("status", parents=[after], help="print the networks and endpoints pynet has")
    rec = sub.add_parser("reconcile", parents=[after], help="repair the kernel from the records")
    rec.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    sub.add_parser("uninstall", parents=[after], help="remove pynet's firewall rules")
    forget = sub.add_parser("forget", parents=[after],
                            help="remove a network dockerd no longer has")
    forget.add_argument("network", help="the network's id (12 characters or more)")
    args = parser.parse_args(argv)
    try:
        settings = from_env(name=args.name, state_dir=args.state_dir, socket_dir=args.socket_dir,
                            sysctl_root=args.sysctl_root, log_level=args.log_level,
                            firewall_backend=args.firewall_backend)
        setup_logging(settings.log_level)
        if args.command == "serve":
            return server.serve(settings)
        # Imported here, not above: they bring the whole driver, which serve's process must
        # not import before it listens (plugin.server).
        from plugin.commands import BY_NAME

        return BY_NAME[args.command](settings, args)
    except PynetError as exc:
        print(f"pynet: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
