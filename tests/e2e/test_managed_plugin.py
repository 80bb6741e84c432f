"""pynet as a Docker managed plugin: build, enable, crash, disable/enable, upgrade, dockerd restart.

The module builds one plugin with scripts/build-plugin.sh (what ``make plugin`` runs) under a
throwaway name, ``pynet-ci-<hex>:latest``, whose pynet instance name (iptables chains, link
aliases) and state directory are its own, so it never meets a user's ``pynet:latest`` or its
records. Networks come from 10.231.192.0/19 unless PYNET_TEST_SUBNETS says otherwise.
"""

import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import (
    LEAST,
    PYNET,
    REPO,
    Subnets,
    docker,
    docker_ok,
    dockerd_log,
    free_port,
    instance_firewall,
    links,
    privileges,
    pynet_firewall,
    restart_dockerd,
    run,
    wait_for,
)
from tests.conftest import Resources

pytestmark = pytest.mark.plugin

BUILD = str(REPO / "scripts" / "build-plugin.sh")
BUILD_TIMEOUT = 900.0  # a cold build runs debootstrap (~1 min here; CI mirrors can be slower)
RUNC_ROOT = "/run/docker/runtime-runc/plugins.moby"  # where dockerd runs plugin containers
DOCKERD_PIDFILE = Path("/var/run/docker.pid")


@dataclass
class Plugin:
    """The module's managed plugin, known by name; its id changes when it is re-created."""

    name: str

    @property
    def ref(self) -> str:
        """What ``docker network create -d`` takes: managed drivers need the tag (ref. P1)."""
        return f"{self.name}:latest"

    @property
    def state_dir(self) -> Path:
        """Its records on the host (the plugin sees the host's /var/lib as /host/var/lib)."""
        return Path(f"/var/lib/{self.name}-state")

    def settings(self) -> list[str]:
        """``docker plugin set`` pairs that keep this plugin away from a real install."""
        return [f"PYNET_NAME={self.name}", f"PYNET_STATE_DIR=/host{self.state_dir}",
                "PYNET_RECONCILE_INTERVAL=1"]

    def build(self, *flags: str, name: str | None = None, tag: str = "latest") -> None:
        """Run the build script: rootfs, ``plugin rm -f`` of the old one, create, set, enable."""
        run([BUILD, *flags, name or self.name, tag, *self.settings()], timeout=BUILD_TIMEOUT)

    def inspect(self, fmt: str) -> str:
        return docker("plugin", "inspect", "--format", fmt, self.ref).stdout.strip()

    def id(self) -> str:
        return self.inspect("{{.Id}}")

    def env(self) -> list[str]:
        return json.loads(self.inspect("{{json .Settings.Env}}"))

    def build_info(self) -> str:
        """The build stamp the script writes into each rootfs (dockerd stores it readable)."""
        root = docker("info", "--format", "{{.DockerRootDir}}").stdout.strip()
        return Path(f"{root}/plugins/{self.id()}/rootfs/etc/pynet-build").read_text()

    def pid(self) -> int | None:
        """Host pid of the plugin's PID 1 (gunicorn's master), None while it is not running."""
        done = run(["runc", "--root", RUNC_ROOT, "state", self.id()], check=False)
        if done.returncode != 0:
            return None
        state = json.loads(done.stdout)
        return state["pid"] if state.get("status") == "running" and state.get("pid") else None

    def socket(self) -> str:
        """The host side of its socket; the path holds across disable and enable."""
        return f"/run/docker/plugins/{self.id()}/pynet.sock"

    def enabled(self) -> bool:
        return self.inspect("{{.Enabled}}") == "true"

    def ensure_enabled(self) -> None:
        """After a test that disabled it, even a failed one: later tests and clean-up need it."""
        if not self.enabled():
            docker("plugin", "enable", self.ref)

    def purge(self) -> list[str]:
        """Remove the plugin and everything it made; return what tests had left behind."""
        leftovers: list[str] = []
        # dockerd is shared: someone else's test may be restarting it right now.
        wait_for("dockerd to answer", docker_ok, timeout=120, interval=0.5)
        if docker("plugin", "inspect", self.ref, check=False).returncode == 0:
            docker("plugin", "enable", self.ref, check=False)  # network rm needs the driver
        for net in docker("network", "ls", "-q", "--filter", f"driver={self.ref}").stdout.split():
            users = docker("network", "inspect", net, "--format",
                           "{{range $k, $v := .Containers}}{{$k}} {{end}}").stdout.split()
            for cid in users:
                leftovers.append(f"container {cid[:12]}")
                docker("rm", "-f", cid, check=False)
            leftovers.append(f"network {net[:12]}")
            docker("network", "rm", net, check=False)
        # Removes pynet's chains from inside the running plugin, then the plugin.
        run([BUILD, "--remove", self.name, "latest"], check=False)
        alias = f"pynet:{self.name}:"
        for item in links():
            if item.get("ifalias", "").startswith(alias):
                leftovers.append(f"link {item['ifname']}")
                run(["ip", "link", "del", item["ifname"]], check=False)
        if instance_firewall(self.name):
            leftovers.append(f"firewall rules of {self.name}")
            run([PYNET, "--name", self.name, "--state-dir", str(self.state_dir), "uninstall"],
                check=False)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return leftovers


@pytest.fixture(scope="module")
def subnets() -> Subnets:
    """This module's range: apart from the rest of the suite's, and from other developers'."""
    return Subnets(os.environ.get("PYNET_TEST_SUBNETS") or "10.231.192.0/19")


@pytest.fixture(scope="module")
def plugin(dockerd: None) -> Iterator[Plugin]:
    """The plugin, built and enabled once for the module, removed with all it made."""
    p = Plugin(f"pynet-ci-{secrets.token_hex(3)}")
    try:
        p.build()
        yield p
    finally:
        leftovers = p.purge()
    assert not leftovers, f"tests left these behind: {leftovers}"


# -- probes ----------------------------------------------------------------------------------

def container_ip(name: str, network: str) -> str:
    fmt = f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
    return docker("inspect", "--format", fmt, name).stdout.strip()


def gateway(network: str) -> str:
    """dockerd's IPAM gives a network the first address of its subnet unless told otherwise."""
    subnet = docker("network", "inspect", "--format", "{{(index .IPAM.Config 0).Subnet}}",
                    network).stdout.strip()
    return str(ipaddress.ip_network(subnet)[1])


def pings(src: str, target: str) -> bool:
    return docker("exec", src, "ping", "-c1", "-W2", target, check=False).returncode == 0


def assert_network_works(res: Resources, network: str, old: str) -> None:
    """``old`` still reaches the gateway, and a container started now joins and reaches it."""
    assert pings(old, gateway(network)), f"{old} lost its gateway"
    new = res.run("--network", network)
    assert pings(new, container_ip(old, network)), f"{new} cannot reach {old}"






def log_since(path: Path, offset: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


# -- tests -----------------------------------------------------------------------------------

def test_config_asks_for_net_admin_only_and_mounts_present_at_every_boot() -> None:
    config = json.loads((REPO / "config.json").read_text())
    assert config["interface"] == {"types": ["docker.networkdriver/1.0"], "socket": "pynet.sock"}
    assert config["network"]["type"] == "host"  # veths must be made where dockerd finds them
    assert config["linux"]["capabilities"] == ["CAP_NET_ADMIN"]
    # A bind source missing at dockerd boot panics dockerd 20.10 (reference P3): only paths
    # every Linux host has.
    assert {m["source"] for m in config["mounts"]} <= {"/proc/sys/net", "/var/lib"}
    env = {e["name"]: e for e in config["env"]}
    assert env["PYNET_SOCKET_NAME"]["value"] == config["interface"]["socket"]
    assert "value" in env["LOG_LEVEL"]["settable"]
    assert "value" in env["PYNET_STATE_DIR"]["settable"]


def test_plugin_process_keeps_three_capabilities_and_no_new_privs(plugin: Plugin) -> None:
    """dockerd gives a plugin Docker's default capabilities plus config.json's; pynet drops
    all but the three it needs before serving."""
    pid = wait_for("the plugin to run", plugin.pid, timeout=30)
    assert privileges(pid) == LEAST


def test_plugin_sees_of_the_host_only_its_two_mounts(plugin: Plugin) -> None:
    """The host's net sysctls and /var/lib (not recursively: nothing mounted below it)."""
    pid = wait_for("the plugin to run", plugin.pid, timeout=30)
    mounts = {line.split()[4]: line.split()[5].split(",")
              for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()}
    from_host = {point: options for point, options in mounts.items()
                 if point.startswith("/host")}
    assert set(from_host) == {"/host/proc/sys/net", "/host/var/lib"}, from_host
    assert all("rw" in options for options in from_host.values())


def test_plugin_is_enabled_with_its_own_state_dir(plugin: Plugin) -> None:
    assert plugin.enabled()
    assert f"PYNET_STATE_DIR=/host{plugin.state_dir}" in plugin.env()
    wait_for("the plugin to open its records", (plugin.state_dir / "pynet.db").exists)


def answers(sock: str) -> bool:
    """A plugin's socket answers a handshake (Plugin.Activate, which dockerd never sends a
    managed plugin and pynet does not log: a GetCapabilities in the log is dockerd's)."""
    return run(["curl", "-sf", "--max-time", "2", "--unix-socket", sock, "-X", "POST",
                "http://x/Plugin.Activate"], check=False).returncode == 0


class SocketWatch(threading.Thread):
    """Watches a plugin's socket from before the plugin starts: when it first takes a
    connection and when it first answers a handshake, on /proc's clock (CLOCK_BOOTTIME), so
    the times compare with a process's start time. Needed beside the enable: dockerd's
    ``plugin enable`` returns only once its own dial succeeded."""

    def __init__(self, sock: str) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.listening: float | None = None
        self.answered: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while self.answered is None and not self.stop.wait(0.005):
            if self.listening is None:
                with socket.socket(socket.AF_UNIX) as conn:
                    try:
                        conn.connect(self.sock)
                    except OSError:
                        continue
                self.listening = time.clock_gettime(time.CLOCK_BOOTTIME)
            if answers(self.sock):
                self.answered = time.clock_gettime(time.CLOCK_BOOTTIME)


def started_at(pid: int) -> float:
    """A process's start on CLOCK_BOOTTIME, in seconds (field 22 of /proc/<pid>/stat counts
    clock ticks since boot)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return ticks / os.sysconf("SC_CLK_TCK")


def test_socket_listens_before_dockerd_dials_it_and_answers_soon_after(plugin: Plugin) -> None:
    """dockerd (20.10 to 29) dials a managed plugin's socket 500 ms after starting it and,
    if nothing listens, waits 3 s before it tries again: an enable, and every dockerd start
    with the plugin enabled, would take 3 s longer. The process starts (runc's init is
    forked) before dockerd's 500 ms do, so the bound here is the stricter one. The first call
    is answered once the worker has imported the driver and restored state (about 0.5 s
    here; 1.5 s leaves a busy host room)."""
    sock = plugin.socket()  # asked before: a docker CLI call would count in the times below
    docker("plugin", "disable", "-f", plugin.ref)
    watch = SocketWatch(sock)
    watch.start()
    try:
        docker("plugin", "enable", plugin.ref)
        wait_for("the plugin to answer", lambda: watch.answered, timeout=5)
    finally:
        watch.stop.set()
        watch.join()
        plugin.ensure_enabled()
    pid = plugin.pid()
    assert pid is not None and watch.listening is not None and watch.answered is not None
    start = started_at(pid)
    assert watch.listening - start < 0.5, \
        f"the plugin listened {watch.listening - start:.2f}s after its process started"
    assert watch.answered - start < 1.5, \
        f"the plugin answered {watch.answered - start:.2f}s after its process started"


def test_two_containers_ping_each_other(plugin: Plugin, res: Resources) -> None:
    net = res.network(plugin.ref)
    a = res.run("--network", net)
    b = res.run("--network", net)
    assert pings(a, container_ip(b, net))
    assert pings(b, a)  # by name: dockerd's embedded DNS
    assert pings(a, gateway(net))
    # The plugin's rootfs has what its firewall backend needs (libnftables, iptables).
    bridge = docker("network", "inspect", "-f", "{{.Id}}", net).stdout.strip()[:12]
    written = instance_firewall(plugin.name)
    assert any(f"pn-{bridge}" in line for line in written), written
    assert any(line.startswith(("table", "chain")) for line in written) == \
        (pynet_firewall() == "nftables")


def test_calls_reach_dockerd_log_at_info_with_duration(plugin: Plugin, res: Resources) -> None:
    log = dockerd_log()
    if log is None:
        pytest.skip("dockerd's stdout is not a file; cannot read its log")
    offset = log.stat().st_size
    res.network(plugin.ref)
    ours = f"plugin={plugin.id()}"
    line = re.compile(r'level=info msg="[^"]*CreateNetwork ok [0-9.]+ms" ' + ours)
    wait_for("CreateNetwork in dockerd's log", lambda: line.search(log_since(log, offset)))
    errors = [x for x in log_since(log, 0).splitlines() if "level=error" in x and ours in x]
    assert not errors, "plugin output on stderr (dockerd files it as errors):\n" + "\n".join(
        errors[:5])


def test_killed_plugin_is_restarted_and_networks_keep_working(plugin: Plugin,
                                                              res: Resources) -> None:
    log = dockerd_log()
    if log is None:
        pytest.skip("dockerd's stdout is not a file; cannot see it register the restarted "
                    "plugin")
    net = res.network(plugin.ref)
    a = res.run("--network", net)
    pid = plugin.pid()
    assert pid is not None
    offset = log.stat().st_size
    os.kill(pid, signal.SIGKILL)
    wait_for("dockerd to restart the killed plugin",
             lambda: plugin.pid() not in (None, pid), timeout=15)
    # dockerd registers a restarted plugin as a new driver half a second or more after its
    # socket answers, and that driver knows none of the old one's joined endpoints: a
    # container started in between is joined by the old driver and programmed by the new,
    # and fails with "remote network driver: endpoint ... not found" (moby's
    # daemon/libnetwork/drivers/remote/driver.go), whatever the plugin. Registration asks
    # for the capabilities; `answers` does not, so the line is dockerd's.
    asked = re.compile(r'msg="[^"]*GetCapabilities ok [0-9.]+ms" plugin=' + plugin.id())
    wait_for("dockerd to register the restarted plugin",
             lambda: asked.search(log_since(log, offset)), timeout=15)
    assert_network_works(res, net, a)


def test_disable_and_enable_keep_networks_working(plugin: Plugin, res: Resources) -> None:
    net = res.network(plugin.ref)
    a = res.run("--network", net)
    docker("plugin", "disable", "-f", plugin.ref)  # -f: networks use it (reference P11)
    try:
        docker("plugin", "enable", plugin.ref)
    finally:
        plugin.ensure_enabled()
    assert_network_works(res, net, a)


def test_log_level_set_while_disabled_takes_effect(plugin: Plugin) -> None:
    log = dockerd_log()
    offset = log.stat().st_size if log else 0
    docker("plugin", "disable", "-f", plugin.ref)
    try:
        docker("plugin", "set", plugin.ref, "LOG_LEVEL=debug")
        docker("plugin", "enable", plugin.ref)
        assert "LOG_LEVEL=debug" in plugin.env()
        if log is not None:
            debug = re.compile(r'level=info msg="[^"]* DEBUG [^"]*" plugin=' + plugin.id())
            wait_for("a DEBUG line in dockerd's log", lambda: debug.search(log_since(log, offset)))
    finally:
        docker("plugin", "disable", "-f", plugin.ref, check=False)
        docker("plugin", "set", plugin.ref, "LOG_LEVEL=info", check=False)
        plugin.ensure_enabled()


def test_recreate_under_the_same_name_keeps_networks(plugin: Plugin, res: Resources) -> None:
    net = res.network(plugin.ref)
    a = res.run("--network", net)
    old = plugin.id()
    plugin.build()  # the upgrade path without a registry: plugin rm -f, create, enable
    assert plugin.id() != old
    assert_network_works(res, net, a)




@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1 (an insecure registry by default): host:port."""
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
                      f"    rootdirectory: {tmp_path / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    with (tmp_path / "registry.log").open("ab") as out:
        proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=out,
                                stderr=out)
    try:
        wait_for("the registry to answer", lambda: run(
            ["curl", "-sf", f"http://127.0.0.1:{port}/v2/"], check=False).returncode == 0)
        yield f"localhost:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_upgrade_from_a_registry_keeps_networks_and_settings(plugin: Plugin, res: Resources,
                                                             registry: str) -> None:
    net = res.network(plugin.ref)
    a = res.run("--network", net)
    old_id = plugin.id()
    remote = f"{registry}/{plugin.name}:v2"
    try:
        plugin.build("--no-enable", name=f"{registry}/{plugin.name}", tag="v2")
        docker("plugin", "push", remote, timeout=120)
        docker("plugin", "rm", remote)
        docker("plugin", "disable", "-f", plugin.ref)
        docker("plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check",
               plugin.ref, remote, timeout=120)
        docker("plugin", "enable", plugin.ref)
    finally:
        docker("plugin", "rm", "-f", remote, check=False)
        plugin.ensure_enabled()
    assert plugin.id() == old_id  # upgraded in place, not re-created
    assert f"plugin={remote}" in plugin.build_info()
    assert f"PYNET_STATE_DIR=/host{plugin.state_dir}" in plugin.env()  # settings survive
    assert_network_works(res, net, a)




def boot_hazards() -> list[str]:
    """Enabled plugins whose mount source is missing: they panic dockerd at boot (ref. P3)."""
    ids = docker("plugin", "ls", "-q", "--no-trunc").stdout.split()
    found = []
    for p in json.loads(docker("plugin", "inspect", *ids).stdout) if ids else []:
        for mount in p["Settings"]["Mounts"] if p["Enabled"] else []:
            if mount.get("Source") and not os.path.exists(mount["Source"]):
                found.append(f"{p['Name']}: {mount['Source']}")
    return found




@pytest.mark.dockerd_restart
def test_dockerd_restart_brings_back_restart_always_containers(plugin: Plugin,
                                                               res: Resources) -> None:
    hazards = boot_hazards()
    if hazards:
        pytest.skip(f"restarting dockerd would crash it (missing mount sources): {hazards}")
    net = res.network(plugin.ref)
    # --stop-timeout 1: busybox sleep as PID 1 ignores SIGTERM; do not hold dockerd's stop.
    always = ("--network", net, "--restart=always", "--stop-timeout", "1")
    a = res.run(*always)
    b = res.run(*always)
    restart_dockerd()
    for name in (a, b):
        wait_for(f"{name} to run again", lambda n=name: docker(
            "inspect", "--format", "{{.State.Running}}", n).stdout.strip() == "true",
            timeout=60, interval=0.2)
    assert pings(a, gateway(net))
    assert pings(a, container_ip(b, net))
    assert pings(b, a)
