"""Least privilege in the source: pynet runs as root, so nothing in it may go through a shell.

Every external program (iptables-*-save/restore) is run with an argument list; a shell would turn
any value that reached a command line into a way to run commands as root.
"""

import ast
import re
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[2] / "plugin"
SHELL_CALLS = {("os", "system"), ("os", "popen"), ("os", "spawnlp"), ("os", "execlp"),
               ("subprocess", "getoutput"), ("subprocess", "getstatusoutput"),
               ("pty", "spawn")}


def sources() -> list[Path]:
    found = sorted(PLUGIN.rglob("*.py"))
    assert len(found) > 10, f"plugin sources not found under {PLUGIN}"
    return found


def test_no_shell_anywhere_in_plugin() -> None:
    offences: list[str] = []
    for path in sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and \
                    (func.value.id, func.attr) in SHELL_CALLS:
                offences.append(f"{path.name}:{node.lineno} {func.value.id}.{func.attr}()")
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                              and kw.value.value is False):
                    offences.append(f"{path.name}:{node.lineno} shell={ast.unparse(kw.value)}")
    assert not offences, offences


def test_no_shell_spelled_any_other_way() -> None:
    """Catches what the AST check cannot see: aliases, and argv lists that start a shell."""
    pattern = re.compile(r"shell\s*=\s*True|os\.system|os\.popen|/bin/(ba)?sh\b|[\"']sh[\"'],\s*"
                         r"[\"']-c[\"']")
    offences = [f"{p.name}:{n}: {line.strip()}" for p in sources()
                for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offences, offences
