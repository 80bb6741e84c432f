"""The driver wired to the real kernel and the state directory, and what a serving worker runs
beside its app: the start-up restore and the periodic reconcile.

This module imports Flask, pyroute2 and the driver: ``plugin.server`` imports it in the
worker, once the socket listens, and ``plugin.commands`` (which ``plugin.cli`` imports only for
the commands other than ``serve``) at its top.
"""

import ctypes
import logging
import threading

from flask import Flask

from plugin import reconcile
from plugin.app import create_app
from plugin.config import Settings
from plugin.driver import Driver
from plugin.firewall.choice import Selected, dockerd_runs_nftables
from plugin.firewall.dualstack import DualStack
from plugin.firewall.nftables import NFTables, dockerd_nftables
from plugin.firewall.rules import Chains
from plugin.netlink import Netlink
from plugin.ports import PortReservations
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


def serving_app(settings: Settings) -> tuple[Driver, Flask]:
    """The driver and its app for a serving worker, with the reconcile thread started: the
    app answers its first call once the restore is done (``Driver.ready``)."""
    driver = build_driver(settings)
    threading.Thread(target=keep_reconciling, args=(driver, threading.Event()),
                     name="reconcile", daemon=True).start()
    return driver, create_app(driver)


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


def release_free_memory() -> None:
    """Give the kernel back what glibc holds free. Python frees pyroute2's per-request
    objects, but glibc keeps the pages while a live allocation sits above them: RSS crept up
    a few KiB per container in the soak with the Python heap flat, and ``malloc_trim`` took
    it back to where it started. Called every reconcile interval."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim this way
