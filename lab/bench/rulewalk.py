"""How many firewall rules the kernel evaluates for a packet: a count that, unlike throughput
and RTT on a shared VM, does not move between minutes.

A packet's firewall cost is the rules it is matched against, in every table and hook it
passes (iptables-nft's rules are nftables rules too). nftables' trace (``meta nftrace set 1``,
read with ``nft monitor trace``) reports each base chain a traced packet enters and each rule
that matched it, by handle, with its verdict; rules it was tried against and did not match are
not reported, so they are counted from the chains' rule order: from where the packet entered
(or resumed) a chain to the rule that matched, and a chain left without a verdict (its end
reached, silently) counts all its remaining rules. A verdict map lookup is one rule.
"""

import json
import os
import re
import select
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lab import run, wait_for

ChainKey = tuple[str, str, str]  # family, table, chain

_LINE = re.compile(r"^trace id (\w+) (\w+) (\S+) (\S+) (packet:|rule|policy|return)(.*)$")
_RULE = re.compile(r"# handle (\d+) \(verdict ([^)]*)\)\s*$")
_IP_ID = re.compile(r"\bip id (\d+)\b")
# Where a trace of the sentinel datagram (``RuleWalk._sync``) goes: nowhere, via loopback.
SENTINEL = "127.0.0.7"
_TO_SENTINEL = re.compile(rf"ip daddr {re.escape(SENTINEL)}\b")


def chain_rules(ruleset: dict) -> dict[ChainKey, list[int]]:
    """Each chain's rule handles in evaluation order, from ``nft -a -j list ruleset``."""
    chains: dict[ChainKey, list[int]] = {}
    for item in ruleset["nftables"]:
        if "chain" in item:
            c = item["chain"]
            chains.setdefault((c["family"], c["table"], c["name"]), [])
        elif "rule" in item:
            r = item["rule"]
            chains.setdefault((r["family"], r["table"], r["chain"]), []).append(r["handle"])
    return chains


@dataclass
class _Walk:
    """One traced packet's way through the chains, and the rules counted so far."""

    chains: dict[ChainKey, list[int]]
    evaluated: int = 0
    stack: list[list] = field(default_factory=list)  # [chain, next rule index to try]

    def _remaining(self, frame: list) -> int:
        return len(self.chains.get(frame[0], [])) - frame[1]

    def _unwind_to(self, chain: ChainKey) -> list:
        """Frames above ``chain`` reached their end without a verdict: all their remaining
        rules were tried."""
        while self.stack and self.stack[-1][0] != chain:
            self.evaluated += self._remaining(self.stack.pop())
        if not self.stack:
            raise ValueError(f"trace event in chain {chain} that the packet never entered")
        return self.stack[-1]

    def enter_base(self, chain: ChainKey) -> None:
        self.stack = [[chain, 0]]

    def matched(self, chain: ChainKey, handle: int, verdict: str) -> None:
        frame = self._unwind_to(chain)
        index = self.chains[chain].index(handle)
        self.evaluated += index - frame[1] + 1
        frame[1] = index + 1
        word, _, target = verdict.partition(" ")
        if word == "jump":
            self.stack.append([(chain[0], chain[1], target), 0])
        elif word == "goto":
            self.stack[-1] = [(chain[0], chain[1], target), 0]
        elif word == "return":
            self.stack.pop()
        elif word != "continue":  # accept, drop, reject, queue: this hook is done with it
            self.stack = []

    def chain_ended(self, chain: ChainKey) -> None:
        """A base chain's policy, or a chain's reported return: its remaining rules were
        tried, and those of the chains it called that ended silently. A base chain that a
        goto left is no longer on the stack: the chains that took its place ended."""
        if not any(frame[0] == chain for frame in self.stack):
            while self.stack:
                self.evaluated += self._remaining(self.stack.pop())
            return
        self._unwind_to(chain)
        self.evaluated += self._remaining(self.stack.pop())


def rules_evaluated(trace: str, chains: dict[ChainKey, list[int]],
                    skip_table: str) -> list[tuple[str, int]]:
    """(packet line, rules evaluated) per traced packet, in the order they were first seen.
    ``trace`` is ``nft -a monitor trace`` output; ``chains`` from ``chain_rules``; rules of
    the table ``skip_table`` (the tracer's own) are not counted, nor are packets to the
    sentinel address.

    A trace id is made from the packet buffer's address, which the next packet may reuse:
    a base chain's packet line with another IP id than the id's last one starts a new
    packet (one packet's hooks all run before its buffer is freed)."""
    walks: list[tuple[str, _Walk]] = []
    current: dict[str, tuple[str, _Walk]] = {}  # trace id: (IP id, its packet's walk)
    for line in trace.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        trace_id, family, table, chain_name, kind, rest = m.groups()
        chain = (family, table, chain_name)
        if kind == "packet:":
            ip_id = _IP_ID.search(rest)
            key = ip_id.group(1) if ip_id else ""
            if trace_id not in current or current[trace_id][0] != key:
                current[trace_id] = (key, _Walk(chains))
                walks.append((rest.strip(), current[trace_id][1]))
        if table == skip_table or trace_id not in current:
            continue  # the tracer's own chains; a packet whose first line was not seen
        walk = current[trace_id][1]
        if kind == "packet:":
            walk.enter_base(chain)
        elif kind == "rule":
            rule = _RULE.search(rest)
            if rule is None:
                raise ValueError(f"trace line without a rule handle: {line!r} (run nft -a)")
            walk.matched(chain, int(rule.group(1)), rule.group(2))
        else:  # policy, return
            walk.chain_ended(chain)
    return [(described, walk.evaluated) for described, walk in walks
            if not _TO_SENTINEL.search(described)]


class _Monitor:
    """``nft -a monitor trace``, read as it prints."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(["nft", "-a", "monitor", "trace"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.text = b""

    def _read(self, seconds: float) -> None:
        """Whatever the monitor printed, waiting up to ``seconds`` for the first of it."""
        assert self._process.stdout is not None
        fd = self._process.stdout.fileno()
        while select.select([fd], [], [], seconds)[0]:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise RuntimeError("nft monitor trace exited")
            self.text += chunk
            seconds = 0

    def sync(self) -> bool:
        """Send the sentinel datagram and wait for its trace: the monitor has printed every
        trace event before it."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.sendto(b"x", (SENTINEL, 9))
        deadline = time.monotonic() + 2
        while f"udp sport {port} ".encode() not in self.text:
            if time.monotonic() > deadline:
                return False
            self._read(0.1)
        return True

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)


def walk_rules(table: str, probe: Callable[[], object], prerouting: str,
               output: str | None = None) -> list[tuple[str, int]]:
    """Run ``probe`` and return (packet, rules evaluated) for each packet it sent or got that
    the match expressions (nft syntax) select, in order: the first is its connection's first.
    ``prerouting`` selects packets coming in (from a container, through its bridge),
    ``output`` packets the host sends. Meanwhile the table ``ip <table>`` marks them at a
    priority before every other table's chains; it is removed again."""
    traced_out = f"{output} meta nftrace set 1; " if output else ""
    run(["nft", "-f", "-"], input=(
        f"table ip {table} {{\n"
        f" chain pre {{ type filter hook prerouting priority -500; "
        f"{prerouting} meta nftrace set 1; }}\n"
        f" chain out {{ type filter hook output priority -500; {traced_out}"
        f"ip daddr {SENTINEL} udp dport 9 meta nftrace set 1; }}\n}}\n"))
    try:
        monitor = _Monitor()
        try:
            wait_for("nft monitor trace to report", monitor.sync, timeout=10, interval=0.2)
            ruleset = json.loads(run(["nft", "-a", "-j", "list", "ruleset"]).stdout)
            probe()
            wait_for("the probe's trace", monitor.sync, timeout=10)
        finally:
            monitor.close()
    finally:
        run(["nft", "delete", "table", "ip", table], check=False)
    # Every traced packet's first line is there: the monitor ran before any was sent (the
    # sentinels' are left out by address). The last line may be cut: it is a sentinel's.
    complete = monitor.text[:monitor.text.rfind(b"\n") + 1]
    return rules_evaluated(complete.decode(errors="replace"), chain_rules(ruleset), table)


def first_and_established(walked: list[tuple[str, int]]) -> tuple[float, float]:
    """Rules evaluated for a connection's first packet, and the most for any later one."""
    if len(walked) < 2:
        raise RuntimeError(f"the probe's trace has {len(walked)} packet(s); expected its "
                           "connection's first and later ones")
    return float(walked[0][1]), float(max(n for _, n in walked[1:]))
