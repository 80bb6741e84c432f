"""``pynet serve | status | reconcile [--dry-run] | forget NETWORK | uninstall``."""

import argparse
import ctypes
import json
import logging
import os
import sys
import threading
from typing import Any

from gunicorn.app.base import BaseApplication

from plugin import reconcile
from plugin.app import create_app
from plugin.config import Settings, from_env
from plugin.driver import Driver
from plugin.errors import PynetError
from plugin.firewall.choice import Selected, dockerd_runs_nftables
from plugin.firewall.dualstack import DualStack
from plugin.firewall.nftables import NFTables, dockerd_nftables
from plugin.firewall.rules import Chains
from plugin.netlink import Netlink
from plugin.owner import claim, server_started
from plugin.ports import PortReservations
from plugin.privileges import drop_privileges
from plugin.store import Store
from plugin.sysctl import Sysctl

log = logging.getLogger("plugin")


def build_driver(settings: Settings, owner: bool = True) -> Driver:
    """A driver wired to the real kernel and the state directory; only the instance's owner
    (owner.py) migrates records of an earlier release."""
    sysctl = Sysctl(settings.sysctl_root)
    return Driver(settings, Store(settings.state_dir, migrate=owner), Netlink(), sysctl,
                  build_firewall(settings), PortReservations(sysctl))


def build_firewall(settings: Settings) -> Selected:
    """The firewall backend the settings choose (iptables chains named by the instance's
    prefix, or its nftables table named by the instance)."""
    iptables = DualStack(Chains(settings.chain_prefix))
    return Selected(settings.firewall_backend,
                    {"iptables": iptables, "nftables": NFTables(settings.name)},
                    lambda: dockerd_runs_nftables(dockerd_nftables, iptables.dockerd_chains))


def setup_logging(level: str) -> None:
    """One line per event on stdout: dockerd files a managed plugin's stderr as errors."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pyroute2 logs every netlink message at debug: LOG_LEVEL=debug is for pynet's decisions.
    logging.getLogger("pyroute2").setLevel(max(logging.INFO, root.level))


def keep_reconciling(driver: Driver, stop: threading.Event) -> None:
    """Restore state before the first call is answered, then re-check every interval."""
    try:  # before anything can change unheard
        looks = reconcile.Looks(driver.netlink.events())
    except Exception:
        log.exception("cannot listen for link changes; the periodic check will always look")
        looks = reconcile.Looks(None)
    try:
        with driver.exclusive():
            done = reconcile.restore(driver)
        log.info("restored %d network(s); %d repair(s)", len(driver.store.networks()), len(done))
    except Exception:
        log.exception("start-up reconcile failed; serving anyway, will retry")
    driver.ready.set()
    try:
        while not stop.wait(driver.settings.reconcile_interval):
            try:
                reconcile.periodic(driver, looks)
            except Exception:
                log.exception("periodic reconcile failed")
            release_free_memory()
    finally:
        looks.close()


# Connections served at once, a thread each (plugin.worker); the worker also runs its main
# thread, the reconciler, the reaper and the driver's side thread (CreateNetwork's
# iptables-restore).
CALL_THREADS = 8
WORKER_THREADS = 1 + 3 + CALL_THREADS


class Server(BaseApplication):  # type: ignore[misc]
    """gunicorn, embedded: one worker (state lives in one process), a few threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.driver: Driver | None = None
        super().__init__()

    def load_config(self) -> None:
        config = {
            "bind": f"unix:{self.settings.socket_path}",
            "workers": 1,
            "worker_class": "plugin.worker.ConnectionWorker",
            "threads": CALL_THREADS,
            "umask": 0o117,  # socket 0660, root's
            "timeout": 60,
            "graceful_timeout": 5,
            # Seconds an idle dockerd connection stays open, holding one of the CALL_THREADS
            # slots; dockerd's calls for one command come milliseconds apart, so 1 s (the
            # least) loses nothing. A stop ends idle connections at once (plugin.worker).
            "keepalive": 1,
            "errorlog": "-",
            "control_socket_disable": True,  # no listener beyond the plugin socket
            "worker_exit": self._finish_deletes,
            "loglevel": self.settings.log_level,
            "logconfig_dict": {
                "version": 1,
                "disable_existing_loggers": False,
                "root": {"level": self.settings.log_level.upper(), "handlers": ["stdout"]},
                "loggers": {"gunicorn.error": {"handlers": ["stdout"], "propagate": False,
                                               "level": self.settings.log_level.upper()}},
                "handlers": {"stdout": {"class": "logging.StreamHandler",
                                        "stream": "ext://sys.stdout", "formatter": "plain"}},
                "formatters": {"plain": {
                    "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
            },
        }
        for key, value in config.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        driver = self.driver = build_driver(self.settings)
        threading.Thread(target=keep_reconciling, args=(driver, threading.Event()),
                         name="reconcile", daemon=True).start()
        return create_app(driver)

    def _finish_deletes(self, _server: object, _worker: object) -> None:
        """On a clean stop, do the kernel side of deletes already answered (otherwise the
        next start would), so a disabled plugin leaves no bridge of a removed network."""
        if self.driver is not None:
            try:
                self.driver.reap()
            except Exception:
                log.exception("finishing deletes at exit failed; the next start will")


def release_free_memory() -> None:
    """Give the kernel back what glibc holds free. Python frees pyroute2's per-request
    objects, but glibc keeps the pages while a live allocation sits above them: RSS crept up
    a few KiB per container in the soak with the Python heap flat, and ``malloc_trim`` took
    it back to where it started. Called every reconcile interval; it costs about a
    millisecond."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim this way


def _serve(settings: Settings, _args: argparse.Namespace) -> int:
    os.makedirs(settings.socket_dir, exist_ok=True)
    # Held (the descriptor stays open) until the process exits.
    claim(settings, "another server can start", wait=settings.call_deadline)
    # Calls are short bursts of Python between syscalls, while the periodic check decodes
    # every link and rule on the host in one go: with the default switch interval each GIL
    # hand-over makes a call wait that long. Handing over every millisecond keeps calls moving.
    sys.setswitchinterval(0.001)
    drop_privileges()
    Server(settings).run()
    return 0


def _status(settings: Settings, _args: argparse.Namespace) -> int:
    store = Store(settings.state_dir, migrate=False)
    started = server_started(settings)
    out = []
    for n in store.networks():
        endpoints = store.endpoints(n.id)
        # Named by dockerd since the server started (None: no server runs to tell). A network
        # that stays unconfirmed may be one dockerd removed while pynet was down: see forget.
        confirmed = None if started is None else n.confirmed >= started
        out.append({"network": n.id, "bridge": n.bridge, "state": n.state,
                    "confirmed": confirmed,
                    "endpoints": [{"id": e.id, "address": e.address,
                                   "address_v6": e.address_v6, "veth": e.host_veth,
                                   "ports": [str(p) for p in e.ports]} for e in endpoints]})
    print(json.dumps(out, indent=2))
    print(f"firewall: {build_firewall(settings).layout()}", file=sys.stderr)
    return 0


def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    if not args.dry_run:  # a plan changes nothing: it may look while the server runs
        claim(settings, "'pynet reconcile' can run", wait=1.0)
    driver = build_driver(settings, owner=not args.dry_run)
    outcomes = reconcile.run(driver, dry_run=args.dry_run)
    for line in outcomes:
        print(line)
    if not outcomes:
        print("kernel matches pynet's records; nothing to do")
    return 1 if any(line.startswith("failed") for line in outcomes) else 0


def _forget(settings: Settings, args: argparse.Namespace) -> int:
    """Mark a network dockerd no longer has for removal: the running server's reaper (or the
    next start) removes its bridge, rules and records, as for a DeleteNetwork."""
    store = Store(settings.state_dir, migrate=False)
    found = [n for n in store.networks() if n.id.startswith(args.network)]
    if len(args.network) < 12 or len(found) != 1:
        print(f"pynet: {args.network!r} names {len(found)} of pynet's networks; give at least "
              "12 characters of one id that 'pynet status' shows", file=sys.stderr)
        return 2
    network = found[0]
    store.mark_network_deleting(network.id)
    when = ("within the reconcile interval" if server_started(settings) is not None
            else "when pynet next starts")
    print(f"network {network.id[:12]} (bridge {network.bridge}) marked for removal; pynet "
          f"removes it {when}")
    return 0


def _uninstall(settings: Settings, _args: argparse.Namespace) -> int:
    claim(settings, "'pynet uninstall' can run", wait=1.0)
    store = Store(settings.state_dir)
    if store.networks():
        print(f"pynet still has {len(store.networks())} network(s); remove them with "
              "'docker network rm' first", file=sys.stderr)
        return 1
    driver = build_driver(settings)
    removed = driver.firewall.remove_all()
    print("removed pynet's firewall rules (iptables chains and jumps, nftables table)"
          if removed else "nothing to remove")
    return 0


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
        handler = {"serve": _serve, "status": _status, "reconcile": _reconcile,
                   "uninstall": _uninstall, "forget": _forget}[args.command]
        return handler(settings, args)
    except PynetError as exc:
        print(f"pynet: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
