"""``pynet status | reconcile [--dry-run] | forget NETWORK | uninstall``: the commands that
look at or repair an instance beside (or instead of) its server."""

import argparse
import json
import sys
from collections.abc import Callable

from plugin import reconcile
from plugin.config import Settings
from plugin.owner import claim, server_started
from plugin.service import build_driver, build_firewall
from plugin.store import Store


def status(settings: Settings, _args: argparse.Namespace) -> int:
    """The networks and endpoints pynet has, and the firewall layout it finds."""
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


def repair(settings: Settings, args: argparse.Namespace) -> int:
    """``pynet reconcile``: the kernel repaired from the records (or the plan, changing nothing)."""
    if not args.dry_run:  # a plan changes nothing: it may look while the server runs
        claim(settings, "'pynet reconcile' can run", wait=1.0)
    driver = build_driver(settings, owner=not args.dry_run)
    outcomes = reconcile.run(driver, dry_run=args.dry_run)
    for line in outcomes:
        print(line)
    if not outcomes:
        print("kernel matches pynet's records; nothing to do")
    return 1 if any(line.startswith("failed") for line in outcomes) else 0


def forget(settings: Settings, args: argparse.Namespace) -> int:
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


def uninstall(settings: Settings, _args: argparse.Namespace) -> int:
    """pynet's firewall rules removed, once it has no network left."""
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


BY_NAME: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "status": status, "reconcile": repair, "forget": forget, "uninstall": uninstall}
