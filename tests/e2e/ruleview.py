"""iptables rules of one scenario, normalized so Docker's bridge driver and pynet compare.

Both drivers' rules are reduced to the same vocabulary: names, addresses and ephemeral ports
become tokens (``br:n0``, ``sub:n0``, ``c0@n0``, ``EPH``), and chains map onto chain tokens.
What is compared rule by rule is the NAT (``DNAT``: published ports, ``POSTROUTING``:
masquerade), which is the same on every engine. The filter and raw layouts are pynet's own on
every engine (plugin/firewall/rules.py says why): Docker's differ between 20.10, 28 and 29
and from its nftables backend, so there the differential compares behaviour (the connectivity
and attack matrix), and the unit and kernel tests pin pynet's rules. pynet's own chains are
all in its view, so tests of pynet alone see every rule it has.
"""

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from plugin.firewall.iptables import Dump, parse_save
from plugin.firewall.rules import Chains

# Docker's chains -> chain tokens (the same on 20.10, 28 and 29's iptables backend).
DOCKER_CHAINS = {
    ("nat", "DOCKER"): "DNAT",
    ("nat", "POSTROUTING"): "POSTROUTING",
}
# Order is meaningful only in FORWARD; Docker appends port rules in random binding order and
# inserts masquerade rules at the top, where their order decides nothing.
ORDERED = {"FORWARD", "RAW"}
EPHEMERAL = range(32768, 61000)  # ip_local_port_range on this host


def pynet_chains(prefix: str) -> dict[tuple[str, str], str]:
    """pynet's chains (instance prefix ``prefix``) -> chain tokens."""
    c = Chains(prefix)
    return {
        ("filter", c.forward): "FORWARD",
        ("filter", c.egress): "EGRESS",
        ("filter", c.ports): "PORTS",
        ("raw", c.raw): "RAW",
        ("nat", c.dnat): "DNAT",
        ("nat", c.postrouting): "POSTROUTING",
    }


def _targets(chains: dict[tuple[str, str], str]) -> dict[tuple[str, str], str]:
    """Jump targets to rename inside rules: a chain's own name -> its token, per table."""
    found = dict(chains)
    found.pop(("nat", "POSTROUTING"), None)  # never a jump target
    return found


@dataclass
class Tokens:
    """Literal names and addresses -> tokens; matched only as whole words.

    Only literals that ``identify`` the scenario decide whether a Docker rule belongs to it:
    127.0.0.1 gets a token but appears in other people's rules too.
    """

    names: dict[str, str] = field(default_factory=dict)
    identifying: set[str] = field(default_factory=set)

    def add(self, literal: str, token: str, identifies: bool = True) -> None:
        self.names[literal] = token
        if identifies:
            self.identifying.add(literal)

    @staticmethod
    def _pattern(literals: Iterable[str]) -> re.Pattern[str] | None:
        alternatives = sorted(literals, key=len, reverse=True)
        if not alternatives:
            return None
        body = "|".join(re.escape(a) for a in alternatives)
        return re.compile(rf"(?<![\w.-])({body})(?![\w-])")

    def mentions(self, text: str) -> bool:
        """True if ``text`` names anything this scenario made."""
        pattern = self._pattern(self.identifying)
        return pattern is not None and pattern.search(text) is not None

    def apply(self, text: str) -> str:
        """``text`` with every literal replaced by its token and ephemeral ports by ``EPH``."""
        pattern = self._pattern(self.names)
        if pattern is not None:
            text = pattern.sub(lambda m: self.names[m.group(1)], text)
        return re.sub(r"--dport (\d+)",
                      lambda m: "--dport EPH" if int(m.group(1)) in EPHEMERAL else m.group(0),
                      text)


def _rename_targets(rule: str, table: str, targets: dict[tuple[str, str], str]) -> str:
    def rename(m: re.Match[str]) -> str:
        return f"{m.group(1)} {targets.get((table, m.group(2)), m.group(2))}"
    return re.sub(r"(-[jg]) (\S+)", rename, rule)


def normalize(dump: Dump, chains: dict[tuple[str, str], str], tokens: Tokens,
              only_mentions: bool) -> dict[str, list[str]]:
    """The rules of ``chains`` in ``dump`` as ``{chain token: [normalized rule, ...]}``.

    ``only_mentions`` keeps just the rules naming something in ``tokens`` (Docker's shared
    chains); otherwise every rule of the chains is the scenario's (pynet's own chains).
    """
    targets = _targets(chains)
    out: dict[str, list[str]] = {token: [] for token in sorted(set(chains.values()))}
    for (table, chain), token in chains.items():
        for rule in dump.chain(table, chain) or []:
            if only_mentions and not tokens.mentions(rule):
                continue
            out[token].append(tokens.apply(_rename_targets(rule, table, targets)))
    return {token: rules if token in ORDERED else sorted(rules) for token, rules in out.items()}


def scenario_rules(save_text: str, tokens: Tokens,
                   pynet_prefix: str | None) -> dict[str, list[str]]:
    """Normalized rules of a scenario run with Docker's driver (prefix None) or pynet's."""
    dump = parse_save(save_text)
    if pynet_prefix is None:
        return normalize(dump, DOCKER_CHAINS, tokens, only_mentions=True)
    return normalize(dump, pynet_chains(pynet_prefix), tokens, only_mentions=False)


def host_port(save_text: str, table_chain: tuple[str, str], destination: str,
              proto: str) -> int | None:
    """The host port of the DNAT rule that sends ``proto`` traffic to ``destination``."""
    for rule in parse_save(save_text).chain(*table_chain) or []:
        if rule.endswith(f"-j DNAT --to-destination {destination}") and f"-p {proto} " in rule:
            found = re.search(r"--dport (\d+)", rule)
            return int(found.group(1)) if found else None
    return None


def hook_problems(save_text: str, prefix: str) -> list[str]:
    """How pynet's jumps into its chains are missing, duplicated or misplaced (none: fine).

    The FORWARD jump must sit below dockerd's DOCKER-USER jump and above its DOCKER-FORWARD
    jump, with nothing above it but bare jumps and rules bound to an interface (20.10's rules
    for its bridges, which cannot match pynet's traffic); the EGRESS jump below dockerd's jumps
    and pynet's FORWARD jump; the nat and raw jumps must exist once.
    """
    dump = parse_save(save_text)
    c = Chains(prefix)
    problems: list[str] = []

    def once(table: str, chain: str, rule: str) -> int | None:
        rules = dump.chain(table, chain) or []
        if rules.count(rule) != 1:
            problems.append(f"{table} {chain}: {rules.count(rule)} x '{rule}'")
            return None
        return rules.index(rule)

    forward = dump.chain("filter", "FORWARD") or []
    at = once("filter", "FORWARD", f"-j {c.forward}")
    if at is not None:
        above = forward[:at]
        unbound = [r for r in above
                   if len(r.split()) != 2 and not re.match(r"(-i|-o) \S+ ", r)]
        if unbound:
            problems.append(f"filter FORWARD: rules above pynet's jump: {unbound}")
        if "-j DOCKER-USER" in forward and "-j DOCKER-USER" not in above:
            problems.append("filter FORWARD: pynet's jump is above '-j DOCKER-USER'")
        if "-j DOCKER-FORWARD" in above:
            problems.append("filter FORWARD: pynet's jump is below '-j DOCKER-FORWARD'")
    at = once("filter", "FORWARD", f"-j {c.egress}")
    if at is not None:
        for jump in ("-j DOCKER-FORWARD", "-j DOCKER-ISOLATION-STAGE-1", f"-j {c.forward}"):
            if jump in forward[at:]:
                problems.append(f"filter FORWARD: pynet's egress jump is above '{jump}'")
    once("nat", "PREROUTING", f"! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j {c.dnat}")
    once("nat", "OUTPUT", f"-m addrtype --dst-type LOCAL -j {c.dnat}")
    once("nat", "POSTROUTING", f"-j {c.postrouting}")
    once("raw", "PREROUTING", f"-j {c.raw}")
    return problems


# Chains and targets that exist whoever else uses the host; anything else names someone's own.
COMMON_CHAINS = {"INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING", "DOCKER",
                 "DOCKER-USER", "DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2",
                 "DOCKER-FORWARD", "DOCKER-CT", "DOCKER-BRIDGE", "DOCKER-INTERNAL"}
TARGETS = {"ACCEPT", "DROP", "RETURN", "REJECT", "MASQUERADE", "DNAT", "SNAT", "LOG",
           "CHECKSUM", "MARK", "CONNMARK"}


def canonical(save_text: str) -> Counter[str]:
    """iptables-save as a multiset of ``<table> <line>``, without counters and comments."""
    lines: Counter[str] = Counter()
    table = ""
    for line in save_text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            lines[f"{table} {line.split(' [')[0]}"] += 1
        elif line.startswith("-A "):
            lines[f"{table} {line}"] += 1
    return lines


def changes(before: Counter[str], after: Counter[str]) -> list[str]:
    """Lines added (``+``) and removed (``-``) between two canonical dumps."""
    return ([f"+ {line}" for line in sorted((after - before).elements())]
            + [f"- {line}" for line in sorted((before - after).elements())])


def someone_elses(change: str) -> bool:
    """A changed line that names a chain, an interface or an address of someone else's.

    Meant for lines already known not to mention anything of the test's: other developers'
    networks come and go on the same host while a test runs.
    """
    words = change.split()[2:]  # drop "+"/"-" and the table
    if words[0].startswith(":"):
        return words[0][1:] not in COMMON_CHAINS
    if words[1] not in COMMON_CHAINS:
        return True
    for flag, value in zip(words, words[1:], strict=False):
        if flag in ("-i", "-o") or (flag in ("-j", "-g") and
                                    value not in COMMON_CHAINS | TARGETS):
            return True
    return re.search(r"\d+\.\d+\.\d+\.\d+", change) is not None
