"""Least privilege at run time: pynet runs as root, so it exposes as little as it can.

Its only way in is the plugin socket (root's, 0660 or stricter); it opens no TCP listener of
its own - the one kind it holds is the reservation of a published host port, which DNAT keeps
any connection from reaching; its records are readable by root only.
"""

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import LEAST, Instance, free_port, new_instance, privileges, purge_instance, run
from tests.conftest import Resources


@pytest.fixture
def inst(dockerd: None) -> Iterator[Instance]:
    """An instance whose state directory pynet has to create itself."""
    inst = new_instance()
    parent = inst.state_dir
    inst.state_dir = os.path.join(parent, "made-by-pynet")
    inst.start()
    yield inst
    leftovers = purge_instance(inst)
    os.rmdir(parent)
    assert not leftovers, leftovers


def plugin_pids(inst: Instance) -> list[int]:
    assert inst.proc is not None
    children = run(["pgrep", "-P", str(inst.proc.pid)]).stdout.split()
    return [inst.proc.pid, *map(int, children)]


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if m := re.fullmatch(r"socket:\[(\d+)\]", target):
            found.add(m.group(1))
    return found


def inet_sockets(pid: int) -> list[tuple[str, int, str]]:
    """(protocol, local port, state) of every TCP/UDP socket the process holds."""
    mine = socket_inodes(pid)
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            if fields[9] in mine:
                found.append((proto, int(fields[1].split(":")[1], 16), fields[3]))
    return found


LISTEN = "0A"


def test_socket_is_roots_and_not_world_accessible(inst: Instance) -> None:
    st = os.stat(inst.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert st.st_uid == 0 and st.st_gid == 0
    assert stat.S_IMODE(st.st_mode) & ~0o660 == 0, oct(st.st_mode)


def test_no_tcp_listener_beyond_published_port_reservations(inst: Instance,
                                                            res: Resources) -> None:
    for pid in plugin_pids(inst):
        assert inet_sockets(pid) == [], f"pid {pid} holds {inet_sockets(pid)}"
    port = free_port()
    net = res.network(inst.name)
    res.run("--network", net, "-p", f"127.0.0.1:{port}:80")
    held = [s for pid in plugin_pids(inst) for s in inet_sockets(pid)]
    # The only socket: the reservation of the published port (DNAT answers it, not pynet).
    assert held == [("tcp", port, LISTEN)], held
    reply = run(["curl", "-s", "--max-time", "3", f"http://127.0.0.1:{port}/"], check=False)
    assert reply.returncode != 0 or "pynet" not in reply.stdout


def test_state_is_readable_by_root_only(inst: Instance, res: Resources) -> None:
    res.run("--network", res.network(inst.name))  # something in the records, WAL written
    st = os.stat(inst.state_dir)
    assert stat.S_IMODE(st.st_mode) == 0o700, oct(st.st_mode)
    files = list(Path(inst.state_dir).iterdir())
    assert any(f.name == "pynet.db" for f in files), files
    for f in files:
        mode = stat.S_IMODE(f.stat().st_mode)
        assert mode & 0o077 == 0, f"{f} is {oct(mode)}"


def test_too_open_state_dir_is_reported_and_files_stay_private(dockerd: None,
                                                               res: Resources) -> None:
    """An administrator's pre-made 0755 directory is not chmod-ed (it might be /tmp), but the
    log says so and the records in it are still 0600."""
    inst = new_instance()
    os.chmod(inst.state_dir, 0o755)
    inst.start()
    try:
        res.run("--network", res.network(inst.name))
        assert f"state directory {inst.state_dir} is mode 755" in inst.log()
        for f in Path(inst.state_dir).iterdir():
            assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f
    finally:
        res.cleanup()
        assert not purge_instance(inst)


def test_the_plugin_socket_is_the_only_unix_listener(inst: Instance) -> None:
    """gunicorn 23+ opens a control socket by default; pynet turns it off."""
    listening = []
    for pid in plugin_pids(inst):
        mine = socket_inodes(pid)
        for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[6] in mine and int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON
                listening.append(fields[7] if len(fields) > 7 else "(unnamed)")
    assert set(listening) == {inst.socket}, listening



def test_serving_process_keeps_three_capabilities_and_no_new_privs(inst: Instance,
                                                                   res: Resources) -> None:
    """Started by root with every capability, pynet keeps what its work needs, and that work
    (a network, a container with a port below 1024, iptables runs) still succeeds."""
    net = res.network(inst.name)
    res.run("--network", net, "-p", "127.0.0.1:1023:80")  # a privileged host port
    for pid in plugin_pids(inst):
        assert privileges(pid) == LEAST, f"pid {pid}"
