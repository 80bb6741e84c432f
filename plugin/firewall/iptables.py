"""Applying a RuleSet: one ``iptables-save`` to read, one ``iptables-restore --noflush`` to write.

Only chains whose content differs from the rendered set, and hooks that are missing, duplicated
or out of place, go into the batch; an unchanged kernel costs one read and no write. That makes
the same call serve every change, the periodic re-assertion after dockerd reshuffles its chains,
and reconciliation at start.

The backend (nft or legacy) is the host's: pynet drives ``iptables-<backend>-*`` so its rules sit
beside dockerd's. Detection never runs ``iptables-legacy`` on an nft host, which would create
legacy tables that stay until reboot.
"""

import difflib
import logging
import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from plugin.errors import KernelError, KernelTimeout
from plugin.firewall.rules import (
    DOCKER_ISOLATION_2,
    Chains,
    Desired,
    Hook,
    RuleSet,
    docker_iptables,
    docker_layout,
    render,
)

log = logging.getLogger(__name__)

TABLES = ("filter", "nat", "raw")
TIMEOUT = 5.0  # seconds; a wedged xtables lock must not hang docker run


@dataclass
class Dump:
    """Parsed ``iptables-save`` output: rules per chain per table (without ``-A CHAIN``)."""

    tables: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def chain(self, table: str, chain: str) -> list[str] | None:
        """The rules of ``chain``, or None if the chain does not exist."""
        return self.tables.get(table, {}).get(chain)


def parse_save(text: str) -> Dump:
    """Parse iptables-save output."""
    dump = Dump()
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("*"):
            table = dump.tables.setdefault(line[1:].strip(), {})
        elif line.startswith(":"):
            table.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            _, chain, rest = line.split(" ", 2)
            table.setdefault(chain, []).append(rest)
    return dump


def detect_backend() -> str:
    """'nft' or 'legacy': the backend whose tables hold the host's (dockerd's) rules."""
    forced = os.environ.get("PYNET_IPTABLES_BACKEND", "")
    if forced in ("nft", "legacy"):
        return forced
    names = Path("/proc/net/ip_tables_names")
    legacy_loaded = names.exists() and names.read_text().split()
    if not legacy_loaded:
        return "nft"
    # Legacy tables exist, but an nft host gets them too once anything ran iptables-legacy.
    # Reading the nft side is harmless; whichever holds rules is the host's backend.
    nft = subprocess.run(["iptables-nft-save"], capture_output=True, text=True, timeout=TIMEOUT)
    return "nft" if "\n-A " in nft.stdout else "legacy"


def _bare_jump(rule: str) -> bool:
    """``-j CHAIN`` with no match: dockerd's jumps, and other pynet instances' hooks."""
    parts = rule.split()
    return len(parts) == 2 and parts[0] in ("-j", "-g")


def _other_interface(rule: str) -> bool:
    """A rule that matches only packets of a named interface (``-i X``/``-o X``, not negated):
    dockerd's per-bridge FORWARD rules, which cannot match traffic of pynet's bridges."""
    parts = rule.split()
    return any(p in ("-i", "-o") and (i == 0 or parts[i - 1] != "!")
               for i, p in enumerate(parts))


def _jumps_to(rule: str, targets: set[str]) -> bool:
    parts = rule.split()
    return len(parts) >= 2 and parts[-2] in ("-j", "-g") and parts[-1] in targets


def hook_fix(hook: Hook, rules: list[str]) -> list[str]:
    """restore-format lines that leave exactly one ``hook`` at its place in ``rules``, and no
    other jump to its chain (an earlier release's form of the same hook).

    A hook with ``after`` must come below the jumps it names, and between the last of them and
    itself there may be only bare jumps (but none named in ``before``) and rules bound to some
    interface: dockerd keeps re-inserting its jumps at the top, with (on 20.10) each new
    network's rules right below them, and other pynet instances' hooks sit there too. Rules
    bound to dockerd's bridges cannot match pynet's traffic (pynet's raw rules drop what they
    route to pynet's subnets), and moving the hook back above them after every ``docker
    network create`` would cost an nft rule deletion each time and buy nothing. Rules above
    the named jumps (kube-proxy's, an administrator's) are not pynet's to judge. Two instances
    never take turns moving their hooks. Other hooks go anywhere above the chain's
    ``-j RETURN``.
    """
    where = [i for i, r in enumerate(rules) if r == hook.rule]
    stale = [r for r in rules if r != hook.rule and _jumps_to(r, {hook.target})]
    others = [r for r in rules if r != hook.rule and r not in stale]
    fix = [f"-D {hook.chain} {r}" for r in stale]
    if len(where) == 1 and _in_place(hook, rules, where[0]):
        return fix
    fix += [f"-D {hook.chain} {hook.rule}"] * len(where)
    start = _below_after(hook, others)
    if hook.last:
        target = start if start else len(others)
    else:
        target = start
        before = {f"-j {name}" for name in hook.before}
        while target < len(others) and _bare_jump(others[target]) \
                and others[target] not in before:
            target += 1
    return fix + [f"-I {hook.chain} {target + 1} {hook.rule}"]


def _below_after(hook: Hook, rules: list[str]) -> int:
    """The index right below the last of ``hook``'s ``after`` jumps in ``rules`` (0: none);
    of a jump found twice the first counts (dockerd's delete-and-insert can leave a stray
    duplicate further down, which changes nothing)."""
    first = {rule: i for i, rule in reversed(list(enumerate(rules)))}
    found = [first[f"-j {name}"] for name in hook.after if f"-j {name}" in first]
    return max(found) + 1 if found else 0


def _in_place(hook: Hook, rules: list[str], at: int) -> bool:
    """Whether the hook at index ``at`` of ``rules`` may stay there (see ``hook_fix``)."""
    if not hook.after:
        return "-j RETURN" not in rules[:at]
    start = _below_after(hook, rules)
    if at < start or {f"-j {name}" for name in hook.before}.intersection(rules[:at]):
        return False
    return all(_bare_jump(r) or _other_interface(r) for r in rules[start:at])


def edited(rules: list[str], lines: list[str]) -> list[str]:
    """``rules`` (one chain) after the ``-D``/``-I``/``-A`` lines of ``hook_fix``."""
    out = list(rules)
    for line in lines:
        op, _chain, rest = line.split(" ", 2)
        if op == "-D":
            out.remove(rest)
        elif op == "-A":
            out.append(rest)
        else:
            position, rule = rest.split(" ", 1)
            out.insert(int(position) - 1, rule)
    return out


def hook_fixes(hooks: list[Hook], table: str, current: Dump) -> list[str]:
    """restore-format lines that put every hook of ``table`` in place, each computed on the
    chain as the fixes before it leave it (two hooks may share a chain)."""
    chains: dict[str, list[str]] = {}
    lines: list[str] = []
    for hook in hooks:
        if hook.table != table:
            continue
        rules = chains.get(hook.chain)
        if rules is None:  # a built-in chain is absent only while its table is empty
            rules = current.chain(table, hook.chain) or []
        fix = hook_fix(hook, rules)
        chains[hook.chain] = edited(rules, fix)
        lines += fix
    return lines


def chain_edits(chain: str, old: list[str], new: list[str]) -> list[str]:
    """Inserts and deletes that turn ``old`` into ``new``.

    With the nft backend a restore that only adds rules is cheap, while any deletion (a flush
    included) makes it several times dearer, so a network create must not rewrite chains it
    only extends.
    Rules that go at the top are inserted at 1 (last first) and rules that go at the bottom
    appended, because an insert at any other position makes iptables-nft read the whole chain.
    """
    added = len(new) - len(old)
    if added > 0 and new[added:] == old:  # a network create: its rules on top
        return [f"-I {chain} 1 {rule}" for rule in reversed(new[:added])]
    if added > 0 and new[:len(old)] == old:  # ... or appended
        return [f"-A {chain} {rule}" for rule in new[len(old):]]
    edits: list[str] = []
    pos = 0  # index into the list as the edits so far have left it
    length = len(old)  # its length likewise
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            pos += i2 - i1
            continue
        edits += [f"-D {chain} {pos + 1}"] * (i2 - i1)
        length -= i2 - i1
        block = new[j1:j2]
        if pos == 0:
            edits += [f"-I {chain} 1 {rule}" for rule in reversed(block)]
        elif pos == length:
            edits += [f"-A {chain} {rule}" for rule in block]
        else:
            edits += [f"-I {chain} {pos + 1 + k} {rule}" for k, rule in enumerate(block)]
        pos += len(block)
        length += len(block)
    return edits


def with_leftovers(old: list[str], new: list[str]) -> list[str]:
    """``new`` with the rules of ``old`` that it drops kept where they are: the same additions
    and no deletions. Added rules go below kept ones (a new network's rules are appended)."""
    added = len(new) - len(old)
    if added >= 0 and (new[added:] == old or new[:len(old)] == old):
        return new  # nothing dropped: the common case, without difflib
    merged: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new,
                                                       autojunk=False).get_opcodes():
        merged += (old[i1:i2] if tag != "equal" else []) + new[j1:j2]
    return merged


def keeping_leftovers(rules: RuleSet, current: Dump) -> RuleSet:
    """``rules`` plus whatever pynet's chains hold beyond them now (see ``with_leftovers``)."""
    chains = {table: {chain: with_leftovers(current.chain(table, chain) or [], wanted)
                      for chain, wanted in wanted_chains.items()}
              for table, wanted_chains in rules.chains.items()}
    return RuleSet(chains, rules.hooks)


def build_batch(rules: RuleSet, current: Dump) -> str | None:
    """The restore input that turns ``current`` into ``rules``; None if nothing differs."""
    out: list[str] = []
    for table in TABLES:
        declare: list[str] = []
        lines: list[str] = []
        for chain, wanted in rules.chains.get(table, {}).items():
            existing = current.chain(table, chain)
            if existing == wanted:
                continue
            if existing is None:
                # Declared first (with --noflush: create) so any rule may jump to it.
                declare.append(f":{chain} - [0:0]")
                lines += [f"-A {chain} {r}" for r in wanted]
            else:
                lines += chain_edits(chain, existing, wanted)
        lines += hook_fixes(rules.hooks, table, current)
        # Jumps to retired chains from pynet's own chains go with the rewrite above.
        lines += removal(current, table, rules.retired.get(table, []),
                         skip=set(rules.chains.get(table, {})))
        if declare or lines:
            out += [f"*{table}", *declare, *lines, "COMMIT"]
    return "\n".join(out) + "\n" if out else None


def applied(current: Dump, rules: RuleSet) -> Dump | None:
    """What ``current`` reads as once ``rules`` are in; None if hooks had to move, because
    their chains are dockerd's and only a fresh read tells where its rules went."""
    if any(hook_fixes(rules.hooks, table, current) for table in TABLES):
        return None
    if any(removal(current, table, names) for table, names in rules.retired.items()):
        return None
    tables = {table: dict(chains) for table, chains in current.tables.items()}
    for table, chains in rules.chains.items():
        tables.setdefault(table, {}).update(chains)
    return Dump(tables)


def removal(current: Dump, table: str, names: list[str],
            skip: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """restore-format lines that remove the chains ``names`` of ``table`` and every jump to
    them from other chains but those in ``skip``; none if they are gone."""
    present = [c for c in names if current.chain(table, c) is not None]
    if not present:
        return []
    lines = [f"-D {chain} {rule}"
             for chain, rules in current.tables.get(table, {}).items()
             if chain not in present and chain not in skip
             for rule in rules if _jumps_to(rule, set(present))]
    return lines + [f"-F {c}" for c in present] + [f"-X {c}" for c in present]


def teardown_batch(chains: Chains, current: Dump) -> str | None:
    """The restore input that removes pynet's chains, earlier releases' included, and every
    jump to them; None if none are left."""
    out: list[str] = []
    retired = chains.retired()
    for table, owned in chains.owned().items():
        lines = removal(current, table, owned + retired.get(table, []))
        if lines:
            out += [f"*{table}", *lines, "COMMIT"]
    return "\n".join(out) + "\n" if out else None


def describe_batch(batch: str, own: set[str]) -> str:
    """For the log: which of pynet's chains (``own``) a restore batch changes, and in which
    other chains it fixes pynet's jumps."""
    changed: list[str] = []
    jumps: list[str] = []
    table = ""
    for line in batch.splitlines():
        if line.startswith("*"):
            table = line[1:]
            continue
        if line.startswith(":"):
            chain = line[1:].split()[0]
        elif line.startswith(("-A ", "-I ", "-D ")):
            chain = line.split()[1]
        else:
            continue
        where = f"{table} {chain}"
        bucket = changed if chain in own else jumps
        if where not in bucket:
            bucket.append(where)
    parts = []
    if changed:
        parts.append("repaired chain(s) " + ", ".join(changed))
    if jumps:
        parts.append("fixed the jump(s) in " + ", ".join(jumps))
    return "; ".join(parts) or "no change"


class IPTables:
    """The firewall backend that drives the host's iptables through save/restore (one
    ``plugin.firewall.backend.Firewall``).

    Writes are serialised. The rules the last write left are remembered, so a call computes
    its batch without an ``iptables-save`` (a process that reads every table, more the more
    networks there are): only pynet edits its own chains, a batch built on a stale picture
    fails and is rebuilt from a fresh read, and reconcile reads afresh every few seconds.
    """

    def __init__(self, chains: Chains, backend: str | None = None, family: int = 4) -> None:
        self.chains = chains
        self.backend = backend or detect_backend()
        self.family = family
        self.name = "iptables" if family == 4 else "ip6tables"
        self._lock = threading.Lock()
        self._known: Dump | None = None
        self._writes = 0  # restores so far, so a read can tell whether it is still current
        self._layout = ""  # dockerd's layout as the last render found it (for the log)

    def _run(self, tool: str, args: list[str], stdin: str | None = None) -> str:
        argv = [f"{self.name}-{self.backend}-{tool}", *args]
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                                  timeout=TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise KernelTimeout(f"{' '.join(argv)} failed: {exc}") from exc
        except OSError as exc:
            raise KernelError(f"{' '.join(argv)} failed: {exc}") from exc
        if done.returncode != 0:
            detail = done.stderr.strip().replace("\n", "; ")
            raise KernelError(f"{' '.join(argv)} exited {done.returncode}: {detail}")
        return done.stdout

    def save(self) -> Dump:
        """The current rules of the tables pynet uses."""
        return parse_save(self._run("save", []))

    def restore(self, batch: str) -> None:
        """Apply ``batch`` atomically per table, leaving everything else in place."""
        log.debug("%s-restore batch:\n%s", self.name, batch)
        self._writes += 1
        self._run("restore", ["--noflush", "--wait"], stdin=batch)

    def render(self, desired: Desired, current: Dump) -> RuleSet:
        """``desired`` in pynet's chains, for the layout dockerd keeps in ``current`` (its
        isolation stages, where they exist, see what leaves pynet's bridges)."""
        layout = docker_layout(current.tables.get("filter", {}))
        if layout != self._layout:
            log.info("firewall: %s found in %s, pynet's rules follow it", layout, self.name)
            self._layout = layout
        stages = current.chain("filter", DOCKER_ISOLATION_2) is not None
        return render(self.chains, desired.networks, desired.ports, stages, self.family)

    def layout(self) -> str:
        """dockerd's firewall layout, read now."""
        return docker_layout(self.save().tables.get("filter", {}))

    def dockerd_chains(self) -> bool:
        """Whether dockerd's iptables jumps are in FORWARD (read now, the filter table only);
        False where the iptables tools fail."""
        try:
            dump = parse_save(self._run("save", ["-t", "filter"]))
        except KernelError:
            return False
        return docker_iptables(dump.tables.get("filter", {}))

    def repair_needed(self, desired: Callable[[], Desired]) -> str | None:
        """What a fresh read says must change (a description), or None if the kernel matches;
        the read also refreshes the picture calls work from, unless one wrote meanwhile. It
        takes no lock: calls must not wait for the periodic check."""
        with self._lock:
            writes = self._writes  # no write is in flight while the lock is held
        current = self.save()
        with self._lock:
            if self._writes == writes:
                self._known = current
        batch = build_batch(self.render(desired(), current), current)
        if batch is None:
            return None
        own = {chain for chains in self.chains.owned().values() for chain in chains}
        return describe_batch(batch, own)

    def apply(self, desired: Callable[[], Desired], fresh: bool = False,
              keep: bool = False, attempts: int = 3) -> bool:
        """Make the kernel match ``desired()``; True if anything had to change. ``fresh``
        reads the kernel instead of trusting the remembered picture (repairs). ``keep`` only
        adds: rules no longer desired stay for a later apply to remove (with nft a batch that
        deletes costs several times one that only adds).

        The rules depend on what exists (dockerd's chains), and dockerd may delete, flush or
        reorder its chains between a read and a write (it does so on every start and network
        create), which makes a ``-D`` or ``-I N`` of the batch fail; reading again and
        retrying is then correct.
        """
        with self._lock:
            attempt = 0
            while True:  # every attempt returns or retries; the last one raises
                current = self._known if attempt == 0 and self._known and not fresh \
                    else self.save()
                rules = self.render(desired(), current)
                if keep:
                    rules = keeping_leftovers(rules, current)
                batch = build_batch(rules, current)
                if batch is None:
                    self._known = current
                    return False
                try:
                    self.restore(batch)
                except KernelError as exc:
                    self._known = None
                    if isinstance(exc, KernelTimeout) or attempt == attempts - 1:
                        raise  # a wedged tool would only wedge again: fail within one timeout
                    log.info("%s batch raced with another writer; retrying", self.name)
                    attempt += 1
                    continue
                self._known = applied(current, rules)
                return True

    def remove_all(self, attempts: int = 3) -> bool:
        """Remove pynet's hooks and chains (uninstall); True if anything was there."""
        with self._lock:
            self._known = None
            attempt = 0
            while True:  # every attempt returns or retries; the last one raises
                batch = teardown_batch(self.chains, self.save())
                if batch is None:
                    return False
                try:
                    self.restore(batch)
                    return True
                except KernelError:
                    if attempt == attempts - 1:
                        raise
                    log.info("%s batch raced with another writer; retrying", self.name)
                    attempt += 1
