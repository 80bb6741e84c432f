"""Durable records of networks and endpoints (SQLite), written before a call returns.

dockerd never re-sends CreateNetwork or CreateEndpoint after a restart, so these records are the
only memory pynet has of what it built. A record is written in state ``creating`` *before* any
kernel work and flipped to ``ready`` after it; a record found in ``creating`` or ``deleting`` at
start tells the reconciler exactly which half-done call to roll back or finish after a crash.

Every commit survives pynet being killed (it is in the kernel's page cache when the call
returns). Network records are also flushed to disk before the call returns, so a power cut
cannot lose one: dockerd keeps the network and will not send it again. Endpoint records are
not: a power cut takes every endpoint's veth with it, the start-up repair drops endpoint
records without their links, and dockerd creates the endpoints again as containers start. An
fsync on ext4 also waits for other programs' dirty data (dockerd's, the containers' layers),
so skipping it takes the slowest waits off a `docker run` / `docker rm`. (A flushed
network commit flushes every earlier endpoint commit with it.)
"""


import json
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plugin import protocol
from plugin.errors import Conflict, PynetError
from plugin.netconfig import NetworkConfig

log = logging.getLogger(__name__)

CREATING, READY, DELETING = "creating", "ready", "deleting"
# PRAGMA user_version of the database. 0: up to the release that kept dockerd's CreateNetwork
# request in each network record; 1: a NetworkConfig (netconfig.py) instead.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS networks (
    id TEXT PRIMARY KEY,
    bridge TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoints (
    id TEXT PRIMARY KEY,
    network_id TEXT NOT NULL,
    state TEXT NOT NULL,
    data TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class NetworkRecord:
    """A network: its configuration, decided at CreateNetwork, and its state. Immutable: the
    store hands every caller the records it keeps (a change is a new record,
    ``dataclasses.replace``, written with ``put_network``)."""

    id: str
    bridge: str
    config: NetworkConfig
    preexisting: bool
    state: str = CREATING
    # When dockerd last named the network in a call (at most once per server run): a network
    # dockerd removed while pynet was down is never named again.
    confirmed: float = 0.0


@dataclass
class PortRecord:
    """One programmed host binding: container ``port`` reachable at ``host_ip:host_port``;
    host port 0 in gateway mode ``routed``: the port is reachable at the container's own
    address, of ``host_ip``'s family, and no host port is held."""

    proto: str
    port: int
    host_ip: str
    host_port: int

    @property
    def routed(self) -> bool:
        return self.host_port == 0

    def __str__(self) -> str:
        """As docker shows a binding: ``0.0.0.0:8080->80/tcp``, ``[::]:8080->80/tcp``, and a
        routed one ``0.0.0.0:->80/tcp``."""
        host = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
        return f"{host}:{self.host_port or ''}->{self.port}/{self.proto}"


@dataclass
class EndpointRecord:
    """An endpoint and the kernel objects and ports that belong to it."""

    id: str
    network_id: str
    address: str | None
    address_v6: str | None
    mac: str
    mac_given: bool
    host_veth: str
    peer_veth: str
    created: float = 0.0
    ports: list[PortRecord] = field(default_factory=list)
    state: str = CREATING
    # Set once the reconciler saw the container end leave the host namespace: seeing it back
    # there afterwards means the container stopped, with no grace period to wait out.
    in_container: bool = False

    def addresses(self) -> list[str]:
        """The endpoint's IPv4 and IPv6 addresses (those it has)."""
        return [a for a in (self.address, self.address_v6) if a]


# An update never takes a record out of ``deleting``: a delete marked without the driver lock
# (mark_deleting, while a call holds the lock) must survive that call's write of the record it
# read before.
_DELETE_IS_FINAL = f"WHERE state != '{DELETING}' OR excluded.state = '{DELETING}'"


class Store:
    """SQLite-backed records; one connection shared under a lock (calls are short)."""

    def __init__(self, state_dir: str, migrate: bool = True) -> None:
        """Open (or create) the records in ``state_dir``. ``migrate``: bring an earlier
        release's records to this schema; only the instance's owner does (owner.py), so that
        a still-running older server is not left with records it cannot read. Records not
        migrated are read all the same."""
        Path(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = stat.S_IMODE(os.stat(state_dir).st_mode)
        if mode & 0o077:
            # Not chmod-ed: a mistaken PYNET_STATE_DIR=/tmp must not lock everyone out of /tmp.
            # The files themselves are 0600 either way.
            log.warning("state directory %s is mode %o; pynet keeps its records 0600, but "
                        "make the directory 0700 (chmod 700 %s)", state_dir, mode, state_dir)
        path = Path(state_dir) / "pynet.db"
        old_umask = os.umask(0o177)  # the database and its journal: 0600
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._flushed = True  # what the connection's synchronous setting is now
            self._db.executescript(_SCHEMA)
            if migrate:
                self._migrate()
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self.path = path
        self._lock = threading.Lock()
        self._networks: dict[str, tuple[str, NetworkRecord]] = {}  # id -> (text, decoded)
        self._kept: tuple[NetworkRecord, ...] | None = None  # _networks' records, in order
        # PRAGMA data_version when _networks last held every network (see networks()).
        self._listed: int | None = None

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _migrate(self) -> None:
        """Bring records written by an earlier release to SCHEMA_VERSION, in one transaction;
        refuse a database of a newer release (its records may mean something else)."""
        self._db.execute("BEGIN IMMEDIATE")  # another process may be migrating too
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise PynetError(f"{self._db_path()} was written by a newer pynet (schema "
                                 f"{version}, this release knows {SCHEMA_VERSION}); run that "
                                 "release or a newer one")
            if version < SCHEMA_VERSION:
                rows = self._db.execute("SELECT id, data FROM networks").fetchall()
                for network_id, text in rows:
                    data = _current(network_id, json.loads(text))
                    self._db.execute("UPDATE networks SET data = ? WHERE id = ?",
                                     (json.dumps(data), network_id))
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _db_path(self) -> str:
        return str(self._db.execute("PRAGMA database_list").fetchone()[2])

    @contextmanager
    def _tx(self, flushed: bool = True, network: str | None = None
            ) -> Iterator[sqlite3.Connection]:
        """A write transaction; ``flushed``: on disk, not just in the page cache, at commit
        (see the module's docstring for which records need that). ``network``: the id of the
        network it writes, read back into the cache after the commit (see networks())."""
        with self._lock:
            if flushed != self._flushed:  # only allowed outside a transaction, as here
                self._db.execute(f"PRAGMA synchronous={'FULL' if flushed else 'NORMAL'}")
                self._flushed = flushed
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            if network is not None:
                row = self._db.execute("SELECT id, data FROM networks WHERE id = ?",
                                       (network,)).fetchone()
                if row is None:
                    self._networks.pop(network, None)
                    self._kept = None
                else:
                    self._decode_network(row)

    def put_network(self, record: NetworkRecord) -> None:
        """Insert or update a network; refuses a bridge name another network holds. Only the
        ``creating`` state is not flushed to disk: it describes kernel objects that do not
        outlive a power cut either, and the ``ready`` write flushes it along."""
        data = json.dumps({**asdict(record), "config": record.config.to_json()})
        try:
            with self._tx(flushed=record.state != CREATING, network=record.id) as db:
                db.execute(
                    "INSERT INTO networks (id, bridge, state, data) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET bridge=excluded.bridge, "
                    f"state=excluded.state, data=excluded.data {_DELETE_IS_FINAL}",
                    (record.id, record.bridge, record.state, data),
                )
        except sqlite3.IntegrityError:
            other = self.network_by_bridge(record.bridge)
            raise Conflict(
                f"bridge {record.bridge} is already used by network "
                f"{other.id[:12] if other else '?'}; choose another "
                "com.docker.network.bridge.name"
            ) from None

    def network(self, network_id: str) -> NetworkRecord | None:
        """The network with this id, or None."""
        return self._one("SELECT id, data FROM networks WHERE id = ?", (network_id,),
                         self._decode_network)

    def network_by_bridge(self, bridge: str) -> NetworkRecord | None:
        """The network that owns bridge ``bridge``, or None."""
        return self._one("SELECT id, data FROM networks WHERE bridge = ?", (bridge,),
                         self._decode_network)

    def networks(self) -> tuple[NetworkRecord, ...]:
        """Every network, oldest first. Every firewall change asks, so the records are kept:
        read from the database again only after another connection (``pynet forget``,
        another process) committed, which moves SQLite's data_version; this connection's
        own writes update them as they commit (``_tx``). The same tuple is returned until
        one of them changes."""
        with self._lock:
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if version != self._listed:
                rows = self._db.execute("SELECT id, data FROM networks ORDER BY rowid").fetchall()
                previous, self._networks, self._kept = self._networks, {}, None
                for network_id, text in rows:
                    cached = previous.get(network_id)
                    if cached is not None and cached[0] == text:
                        self._networks[network_id] = cached  # unchanged: not decoded again
                    else:
                        self._decode_network((network_id, text))
                self._listed = version
            if self._kept is None:
                self._kept = tuple(record for _, record in self._networks.values())
            return self._kept

    def delete_network(self, network_id: str) -> None:
        """Forget a network (its endpoints must be gone already)."""
        with self._tx(network=network_id) as db:
            db.execute("DELETE FROM networks WHERE id = ?", (network_id,))

    def put_endpoint(self, record: EndpointRecord) -> None:
        """Insert or update an endpoint."""
        data = json.dumps(asdict(record))
        with self._tx(flushed=False) as db:
            db.execute(
                "INSERT INTO endpoints (id, network_id, state, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET state=excluded.state, data=excluded.data "
                f"{_DELETE_IS_FINAL}",
                (record.id, record.network_id, record.state, data),
            )

    def mark_deleting(self, table: str, object_id: str) -> bool:
        """Flag a network or endpoint for the reaper to remove; one field only, so a
        concurrent update of the record is never overwritten. True if the record exists."""
        if table not in ("networks", "endpoints"):
            raise ValueError(f"no table {table!r}")
        with self._tx(flushed=table == "networks",
                      network=object_id if table == "networks" else None) as db:
            done = db.execute(f"UPDATE {table} SET state = ?, data = json_set(data, '$.state', ?)"
                              " WHERE id = ?", (DELETING, DELETING, object_id))
        return done.rowcount > 0

    def mark_network_deleting(self, network_id: str) -> bool:
        """Flag a network and every endpoint it still has for the reaper, in one transaction
        (a DeleteNetwork, or ``pynet forget``). True if the network exists."""
        with self._tx(network=network_id) as db:
            db.execute("UPDATE endpoints SET state = ?, data = json_set(data, '$.state', ?) "
                       "WHERE network_id = ?", (DELETING, DELETING, network_id))
            done = db.execute("UPDATE networks SET state = ?, data = json_set(data, '$.state', "
                              "?) WHERE id = ?", (DELETING, DELETING, network_id))
        return done.rowcount > 0

    def mark_confirmed(self, network_id: str, when: float) -> None:
        """Note that dockerd named the network at ``when`` (one field: see mark_deleting)."""
        with self._tx(flushed=False, network=network_id) as db:
            db.execute("UPDATE networks SET data = json_set(data, '$.confirmed', ?) WHERE id = ?",
                       (when, network_id))

    def mark_in_container(self, endpoint_id: str) -> None:
        """Note that an endpoint's container end went into its container; one field only, so
        a concurrent update of the record by a call (its ports) is never overwritten."""
        with self._tx(flushed=False) as db:
            db.execute("UPDATE endpoints SET data = json_set(data, '$.in_container', json('true'))"
                       " WHERE id = ?", (endpoint_id,))

    def endpoint(self, endpoint_id: str) -> EndpointRecord | None:
        """The endpoint with this id, or None."""
        return self._one("SELECT data FROM endpoints WHERE id = ?", (endpoint_id,),
                         _decode_endpoint)

    def endpoints(self, network_id: str | None = None) -> list[EndpointRecord]:
        """Every endpoint, or those of one network."""
        if network_id is None:
            return self._all("SELECT data FROM endpoints ORDER BY id", (), _decode_endpoint)
        return self._all("SELECT data FROM endpoints WHERE network_id = ? ORDER BY id",
                         (network_id,), _decode_endpoint)

    def delete_endpoint(self, endpoint_id: str) -> None:
        """Forget an endpoint."""
        with self._tx(flushed=False) as db:
            db.execute("DELETE FROM endpoints WHERE id = ?", (endpoint_id,))

    def _one(self, sql: str, args: tuple[Any, ...], decode: Callable[[Any], Any]) -> Any:
        rows = self._all(sql, args, decode)
        return rows[0] if rows else None

    def _all(self, sql: str, args: tuple[Any, ...], decode: Callable[[Any], Any]) -> list[Any]:
        with self._lock:  # also guards the cache: a delete cannot interleave with a decode
            return [decode(row) for row in self._db.execute(sql, args).fetchall()]

    def _decode_network(self, row: tuple[str, str]) -> NetworkRecord:
        """The network in ``row`` (id, stored text), from the cache unless its text changed.
        One entry per network, dropped with it."""
        network_id, text = row
        cached = self._networks.get(network_id)
        if cached is None or cached[0] != text:
            data = _current(network_id, json.loads(text))
            data["config"] = NetworkConfig.from_json(data["config"])
            cached = self._networks[network_id] = (text, NetworkRecord(**data))
            self._kept = None
        return cached[1]


# Options the release that kept requests (schema 0) accepted and ignored: its networks were
# built without them, so their configs are read without them.
_IGNORED_BY_SCHEMA_0 = ("com.docker.network.bridge.gateway_mode_ipv4",
                        "com.docker.network.bridge.gateway_mode_ipv6",
                        "com.docker.network.bridge.trusted_host_interfaces")


def _current(network_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """A stored network record in this schema's form (schema 0 kept dockerd's request)."""
    if "config" in data:
        return data
    request = dict(data.pop("request"))
    options = dict(request.get("Options") or {})
    options.pop("com.docker.network.enable_ipv4", None)
    generic = options.get("com.docker.network.generic")
    if isinstance(generic, dict):
        options["com.docker.network.generic"] = {
            k: v for k, v in generic.items() if k not in _IGNORED_BY_SCHEMA_0}
    request["Options"] = options
    return {**data, "config": _config_of_request(network_id, request).to_json()}


def _config_of_request(network_id: str, request: dict[str, Any]) -> NetworkConfig:
    """What a schema-0 record's CreateNetwork request asked for."""
    try:
        return NetworkConfig.from_request(protocol.CreateNetwork.parse(request))
    except PynetError as exc:
        raise PynetError(f"network {network_id[:12]}'s stored request does not parse any more "
                         f"({exc}); run the release that wrote it, remove the network, then "
                         "upgrade") from exc


def _decode_endpoint(row: tuple[str]) -> EndpointRecord:
    data = json.loads(row[0])
    data["ports"] = [PortRecord(**p) for p in data.get("ports", [])]
    return EndpointRecord(**data)
