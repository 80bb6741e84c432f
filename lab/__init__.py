"""The lab the tests and the scripts (benchmark, soak) work in: a real dockerd, pynet
instances under throwaway names, test subnets, request builders, clean-up.

Everything made here is named with a throwaway pynet instance name or registered for clean-up,
and the tests end by checking that nothing of it is left. Not part of the plugin: its package
is ``plugin`` alone.
"""

import functools
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from plugin.netlink import Netlink

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
PYNET = str(VENV_BIN / "pynet")
# Debian's 20.10 client speaks the daemon's API natively (the 28.x client on PATH refuses
# --mac-address against API 1.41).
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
IMAGE = "busybox:local"

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T], timeout: float = 10.0,
             interval: float = 0.05) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last: T = probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
        last = probe()
    return last


def run(argv: list[str], check: bool = True, timeout: float = 60.0,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a program (never through a shell) and capture its output."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}"
                             f"{done.stderr}")
    return done


def docker(*args: str, check: bool = True,
           timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """The docker CLI."""
    return run([DOCKER, *args], check=check, timeout=timeout)


def docker_ok() -> bool:
    """True when dockerd answers (a starting dockerd may hold a request: that is a no)."""
    try:
        return run([DOCKER, "info", "--format", "{{.ServerVersion}}"], check=False,
                   timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@functools.cache
def engine() -> int:
    """The running dockerd's major version (20, 28, 29): the bridge driver the differential
    tests compare with changed between them."""
    version = docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    return int(version.split(".")[0])


@functools.cache
def firewall_backend() -> str:
    """The firewall dockerd drives: "iptables", or "nftables" (Docker 29's other backend,
    which writes no iptables rules at all). Engines before 28 do not say: iptables."""
    return (docker_api("info").get("FirewallBackend") or {}).get("Driver") or "iptables"


DOCKER_SOCKET = "/var/run/docker.sock"  # dockerd's API, as the tests' engines serve it


def docker_api(path: str) -> dict:
    """A GET of dockerd's API, as it answers (the CLI the tests run, Debian's, is older than
    some engines and drops what it does not know)."""
    done = run(["curl", "-sf", "--max-time", "10", "--unix-socket", DOCKER_SOCKET,
                f"http://localhost/{path}"])
    return json.loads(done.stdout)


def docker_api_post(path: str, body: dict[str, Any]) -> tuple[int, dict]:
    """A POST to dockerd's API (for what the tests' CLI cannot say): the HTTP status and the
    JSON answer."""
    done = run(["curl", "-s", "--max-time", "30", "--unix-socket", DOCKER_SOCKET,
                "-X", "POST", "-H", "Content-Type: application/json", "-d", json.dumps(body),
                "-w", "\n%{http_code}", f"http://localhost/{path}"])
    answer, status = done.stdout.rsplit("\n", 1)
    return int(status), json.loads(answer or "{}")


def free_port() -> int:
    """A host TCP port nothing listens on right now (the kernel's pick, free on every
    address), for a fixed ``-p`` or a test server."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def hex_id() -> str:
    """A network or endpoint id as dockerd makes them."""
    return secrets.token_hex(32)


def network_body(network_id: str, pool: str, gateway: str | None = None, *,
                 space: str = "LocalDefault", generic: dict[str, str] | None = None,
                 aux: dict[str, str] | None = None, pool_v6: str | None = None,
                 internal: bool = False) -> dict[str, Any]:
    """A CreateNetwork request as dockerd sends it; ``gateway`` defaults to the pool's first
    address (with its prefix), "" leaves it out; ``pool_v6`` adds an IPv6 pool (gateway its
    first address)."""
    net = ipaddress.IPv4Network(pool)
    ipam: dict[str, Any] = {"AddressSpace": space, "Pool": pool, "AuxAddresses": aux or {}}
    if gateway != "":
        ipam["Gateway"] = gateway or f"{net[1]}/{net.prefixlen}"
    v6 = []
    if pool_v6 is not None:
        net6 = ipaddress.IPv6Network(pool_v6)
        v6 = [{"AddressSpace": space, "Pool": pool_v6, "AuxAddresses": {},
               "Gateway": f"{net6[1]}/{net6.prefixlen}"}]
    return {"NetworkID": network_id, "IPv4Data": [ipam], "IPv6Data": v6,
            "Options": {"com.docker.network.enable_ipv6": pool_v6 is not None,
                        "com.docker.network.internal": internal,
                        "com.docker.network.generic": generic or {}}}


def driver_call(client: Any, method: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` to an app's test client as dockerd would (no Content-Type); the JSON
    object it answers. The reply is closed, as the server closes it once sent (which starts
    the work a call leaves for after its answer: plugin/deferred_rules.py)."""
    with client.post(f"/NetworkDriver.{method}", data=json.dumps(body)) as reply:
        payload = json.loads(reply.data)
    assert isinstance(payload, dict), reply.data
    return payload


def dockerd_pid() -> int | None:
    found = run(["pidof", "dockerd"], check=False).stdout.split()
    return int(found[0]) if found else None


def alive(pid: int) -> bool:
    """A zombie counts as gone: PID 1 of this VM does not reap orphans."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def dockerd_log() -> Path | None:
    """The file dockerd writes its log to, if its stdout is one (it is when run by hand)."""
    pid = dockerd_pid()
    if pid is None:
        return None
    target = Path(os.readlink(f"/proc/{pid}/fd/1"))
    return target if target.is_file() else None


@dataclass(frozen=True)
class DockerdCommand:
    """How the running dockerd was started: what it takes to start it again as it was."""

    argv: list[bytes]
    env: dict[bytes, bytes]
    cwd: str
    log: Path


def stop_dockerd() -> DockerdCommand:
    """Stop dockerd (there is no systemd here) and say how to start it again. Running
    containers of everyone on the host stop with it: use sparingly."""
    pid = dockerd_pid()
    assert pid is not None, "dockerd is not running"
    command = DockerdCommand(
        argv=Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0"),
        env=dict(item.split(b"=", 1) for item in
                 Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item),
        cwd=os.readlink(f"/proc/{pid}/cwd"),
        log=dockerd_log() or Path("/var/log/pynet-test-dockerd.log"))
    os.kill(pid, signal.SIGTERM)
    wait_for("dockerd to stop", lambda: not alive(pid), timeout=120, interval=0.2)
    return command


def start_dockerd(command: DockerdCommand) -> None:
    """Start dockerd as ``command`` says and wait until it answers."""
    with command.log.open("ab") as out:
        subprocess.Popen(command.argv, env=command.env, cwd=command.cwd, stdout=out,
                         stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for("dockerd to answer again", docker_ok, timeout=120, interval=0.5)
    except AssertionError:
        tail = command.log.read_text(errors="replace").splitlines()[-20:]
        raise AssertionError("dockerd did not come back; start it by hand "
                             f"({' '.join(a.decode() for a in command.argv)}). Log:\n"
                             + "\n".join(tail)) from None


def restart_dockerd() -> None:
    """Stop dockerd and start it again as it was started (argv, environment, log, cwd)."""
    start_dockerd(stop_dockerd())


def ensure_dockerd() -> None:
    """Start Debian's dockerd if none answers, and wait until it does."""
    if docker_ok():
        return
    log = open("/var/log/pynet-test-dockerd.log", "ab")
    subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
    wait_for("dockerd to answer", docker_ok, timeout=60, interval=0.5)


def ensure_image() -> None:
    """The local busybox image the tests run."""
    run([str(REPO / "scripts" / "busybox-image.sh")])


def links(kind: str | None = None) -> list[dict]:
    """``ip -j -d link`` (iproute2 is used by tests only, to observe the kernel independently)."""
    argv = ["ip", "-j", "-d", "link", "show"] + (["type", kind] if kind else [])
    return json.loads(run(argv).stdout or "[]")


def link(name: str) -> dict | None:
    """One link as ``ip -j -d link show`` reports it, or None."""
    done = run(["ip", "-j", "-d", "link", "show", "dev", name], check=False)
    if done.returncode != 0:
        return None
    found = json.loads(done.stdout)
    return found[0] if found else None


def addresses(name: str) -> list[str]:
    """CIDR addresses on a link."""
    done = run(["ip", "-j", "addr", "show", "dev", name], check=False)
    if done.returncode != 0:
        return []
    return [f"{a['local']}/{a['prefixlen']}" for i in json.loads(done.stdout)
            for a in i.get("addr_info", [])]


def iptables_save() -> str:
    """The host's rules (filter and nat)."""
    return run(["iptables-save"]).stdout


def ip6tables_save() -> str:
    """The host's IPv6 rules."""
    return run(["ip6tables-save"]).stdout


def nft_objects(name: str) -> list[str]:
    """A pynet instance's nftables table (when it writes nftables) as sorted lines, one per
    chain, rule, set and element, without handles: equal for equal content, whatever order
    the kernel lists hash set elements in. Empty if there is no table."""
    done = run(["nft", "-j", "list", "table", "inet", name], check=False)
    if done.returncode != 0:
        return []
    lines: list[str] = []
    for item in json.loads(done.stdout)["nftables"]:
        for kind, body in item.items():
            if kind == "metainfo":
                continue
            body = {k: v for k, v in body.items() if k != "handle"}
            lines += [f"{kind} {body['name']} element {json.dumps(e, sort_keys=True)}"
                      for e in body.pop("elem", [])]
            lines.append(f"{kind} {json.dumps(body, sort_keys=True)}")
    return sorted(lines)


def nft_host_port(name: str, address: str, port: int, proto: str) -> int | None:
    """The host port a pynet instance that writes nftables forwards to ``address:port``."""
    for line in nft_objects(name):
        if line.startswith(("map port_any element", "map port_host element",
                            "map port_any6 element", "map port_host6 element")):
            key, value = json.loads(line.split(" element ", 1)[1])
            if value["concat"] == [address, port] and key["concat"][-2] == proto:
                return int(key["concat"][-1])
    return None


def instance_firewall(name: str) -> list[str]:
    """Everything in the firewall that is a pynet instance's: its iptables chains and the
    jumps to them, and its nftables table."""
    prefix = f"{name.upper()}-"
    return ([line for save in (iptables_save(), ip6tables_save())
             for line in save.splitlines() if prefix in line and not line.startswith("#")]
            + nft_objects(name))


@functools.cache
def pynet_firewall() -> str:
    """The firewall backend a pynet instance started by the tests writes: the
    PYNET_FIREWALL_BACKEND they pass on, with ``auto`` resolved as pynet resolves it."""
    choice = os.environ.get("PYNET_FIREWALL_BACKEND", "auto")
    if choice != "auto":
        return choice
    return "nftables" if firewall_backend() == "nftables" else "iptables"


def stable_iptables_save(timeout: float = 10.0) -> str:
    """iptables-save once two reads in a row agree (dockerd reorders jumps non-atomically)."""
    previous = [iptables_save()]

    def settled() -> bool:
        current = iptables_save()
        same = current == previous[0]
        previous[0] = current
        return same
    wait_for("iptables to settle", settled, timeout=timeout, interval=0.2)
    return previous[0]


class Subnets:
    """Hands out /24 subnets from a range no host route or resolver uses.

    Each developer or CI run can move its range with PYNET_TEST_SUBNETS so concurrent runs on
    one machine never collide.
    """

    def __init__(self, pool: str | None = None, prefix: int = 24) -> None:
        self.pool = ipaddress.IPv4Network(pool or os.environ.get("PYNET_TEST_SUBNETS",
                                                                 "10.231.64.0/18"))
        self._all = list(self.pool.subnets(new_prefix=prefix))
        self._next = secrets.randbelow(len(self._all))

    # IPv6 subnets: a /64 per /24, in a ULA /48 of the tests' own.
    POOL_V6 = ipaddress.IPv6Network("fd7e:231::/48")

    def v6(self, subnet: ipaddress.IPv4Network) -> ipaddress.IPv6Network:
        """The IPv6 /64 that goes with ``subnet`` (the /24 number in its fourth group)."""
        number = (int(subnet.network_address) >> 8) & 0xFFFF
        return ipaddress.IPv6Network((int(self.POOL_V6.network_address) | number << 64, 64))

    def take(self) -> ipaddress.IPv4Network:
        """The next subnet no host route overlaps now (rotating; tests remove their networks,
        so reuse is safe, and a bridge someone left behind is passed over)."""
        routes = [dst for dst, _ in Netlink.routes_v4() if dst.prefixlen]
        for _ in range(len(self._all)):
            subnet = self._all[self._next % len(self._all)]
            self._next += 1
            if not any(subnet.overlaps(dst) for dst in routes):
                return subnet
        raise AssertionError(f"every /{self._all[0].prefixlen} of {self.pool} overlaps a host "
                             "route; remove what is left there, or set PYNET_TEST_SUBNETS")


@dataclass
class Instance:
    """One pynet process serving under a throwaway driver name."""

    name: str
    state_dir: str
    log_path: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def socket(self) -> str:
        return f"/run/docker/plugins/{self.name}.sock"

    def argv(self, *command: str) -> list[str]:
        return [PYNET, "--name", self.name, "--state-dir", self.state_dir, *command]

    def start(self) -> None:
        """Start serving and wait until the socket answers."""
        log = open(self.log_path, "ab")
        env = {**os.environ, "PYNET_RECONCILE_INTERVAL": "1", **self.env}
        self.proc = subprocess.Popen(self.argv("serve"), stdout=log, stderr=log, env=env,
                                     start_new_session=True)
        wait_for(f"{self.name} to listen", self.answers, timeout=15)

    def answers(self) -> bool:
        done = run(["curl", "-sf", "--max-time", "2", "--unix-socket", self.socket, "-X", "POST",
                    "http://x/NetworkDriver.GetCapabilities"], check=False)
        return done.returncode == 0

    def call(self, method: str, body: dict | str) -> dict:
        """POST to the plugin socket as dockerd would (no Content-Type)."""
        data = body if isinstance(body, str) else json.dumps(body)
        done = run(["curl", "-s", "--max-time", "20", "--unix-socket", self.socket, "-X",
                    "POST", "-H", "Content-Type:", "--data-binary", "@-",
                    f"http://x/{method}"], input=data)
        return json.loads(done.stdout)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the whole process group (gunicorn master and worker)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=15)
        self.proc = None

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")


def new_instance(env: dict[str, str] | None = None) -> Instance:
    """A not-yet-started instance with its own name and state directory."""
    name = f"pynet-t{secrets.token_hex(3)}"
    state = tempfile.mkdtemp(prefix=f"{name}-state-")
    return Instance(name=name, state_dir=state, log_path=f"/tmp/{name}.log", env=env or {})


def serving(env: dict[str, str] | None = None) -> Iterator[Instance]:
    """A fresh instance for a fixture (``yield from serving()``): started before the test, and
    afterwards everything it made is removed; the test fails if it left anything behind."""
    inst = new_instance(env)
    inst.start()
    yield inst
    leftovers = purge_instance(inst)
    assert not leftovers, f"the test left these behind: {leftovers}"


def instance_links(name: str) -> list[str]:
    """The links a pynet instance made (its alias marks them)."""
    return [item["ifname"] for item in links()
            if item.get("ifalias", "").startswith(f"pynet:{name}:")]


def purge_instance(inst: Instance) -> list[str]:
    """Remove everything an instance made: containers, networks, links, chains, state.

    Returns what was found left over, so the caller can assert the tests cleaned up. Another
    test may be restarting dockerd right now, so wait for it rather than fail half-way.
    """
    leftovers: list[str] = []
    try:
        wait_for("dockerd to answer", docker_ok, timeout=90, interval=0.5)
        nets = docker("network", "ls", "-q", "--filter", f"driver={inst.name}").stdout.split()
        for net in nets:
            users = docker("network", "inspect", net, "--format",
                           "{{range $k, $v := .Containers}}{{$k}} {{end}}",
                           check=False).stdout.split()
            for cid in users:
                leftovers.append(f"container {cid[:12]}")
                docker("rm", "-f", cid, check=False)
            leftovers.append(f"network {net[:12]}")
            docker("network", "rm", net, check=False)
    finally:
        inst.stop()
        alias = f"pynet:{inst.name}:"
        for item in links():
            if item.get("ifalias", "").startswith(alias):
                leftovers.append(f"link {item['ifname']}")
                run(["ip", "link", "del", item["ifname"]], check=False)
        # With its records gone the instance has no network left, so uninstall removes its
        # chains and jumps whatever the tests left in them.
        shutil.rmtree(inst.state_dir, ignore_errors=True)
        run(inst.argv("uninstall"), check=False)
        shutil.rmtree(inst.state_dir, ignore_errors=True)
        if instance_firewall(inst.name):  # uninstall itself failed to remove them
            leftovers.append(f"firewall rules of {inst.name} after uninstall")
    if not leftovers:
        Path(inst.log_path).unlink(missing_ok=True)  # kept only when something went wrong
    return leftovers


def privileges(pid: int) -> dict[str, str]:
    """CapEff, CapPrm, CapBnd, CapInh and NoNewPrivs of a process."""
    wanted = ("CapEff", "CapPrm", "CapBnd", "CapInh", "NoNewPrivs")
    return {key: value.strip() for key, value in
            (line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
            if key in wanted}


# CAP_NET_BIND_SERVICE (10), CAP_NET_ADMIN (12), CAP_NET_RAW (13): plugin/privileges.py.
KEPT = f"{(1 << 10) | (1 << 12) | (1 << 13):016x}"
LEAST = {"CapEff": KEPT, "CapPrm": KEPT, "CapBnd": KEPT, "CapInh": f"{0:016x}",
         "NoNewPrivs": "1"}
