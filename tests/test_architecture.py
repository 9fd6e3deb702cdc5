"""The tree's rules, checked: no import cycle, the data path free of Celery, one schema.

Imports are read from the source (module level and inside functions alike: a
function-local import hides a cycle, it does not remove it).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

import dispatcher
from dispatcher import model
from dispatcher.model import Status
from dispatcher.store import keys

ROOT = Path(dispatcher.__file__).parent
# The data path: it is handed what it needs and never reaches for Celery.
DATA_PATH = ("dispatcher.dispatch", "dispatcher.runtime", "dispatcher.vast", "dispatcher.store",
             "dispatcher.model", "dispatcher.errors", "dispatcher.config",
             "dispatcher.validation")
CELERY = ("celery", "kombu")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file, resolved to absolute names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            # "from dispatcher.store import keys" imports the submodule keys.
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def graph() -> dict[str, set[str]]:
    """Edges between our own modules (a package's __init__ is the package's name)."""
    g: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets = {t for t in imports_of(path) if t in MODULES and t != name}
        # Importing a submodule runs its packages' __init__ first; that is not an edge
        # that can close a cycle back through the submodule itself.
        g[name] = {t for t in targets if not name.startswith(t + ".")}
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n)
    return found


def in_layer(module: str, layer: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in layer)


def test_no_import_cycle_inside_the_package() -> None:
    assert cycles(graph()) == []


def test_the_cycle_check_can_fail() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_data_path_imports_neither_worker_nor_celery() -> None:
    offenders = {}
    for name, path in MODULES.items():
        if in_layer(name, DATA_PATH):
            bad = sorted(t for t in imports_of(path)
                         if in_layer(t, ("dispatcher.worker", "dispatcher.webhooks",
                                         "dispatcher.ops", "dispatcher.dev",
                                         "dispatcher.emulator", "dispatcher.client"))
                         or t.split(".")[0] in CELERY)
            if bad:
                offenders[name] = bad
    assert offenders == {}


def test_importing_the_data_path_loads_no_celery() -> None:
    code = ("import sys, dispatcher.dispatch, dispatcher.store, dispatcher.vast; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


LUA = sorted((ROOT / "store" / "lua").rglob("*.lua"))


@pytest.mark.parametrize("lua", LUA, ids=lambda p: str(p.relative_to(ROOT)))
def test_lua_spells_no_key_and_no_status(lua: Path) -> None:
    """Key names, statuses and outcomes come from store/keys.py (keys.lua_prelude)."""
    code = "\n".join(line.split("--")[0] for line in lua.read_text().splitlines())
    strings = re.findall(r"'([^']*)'", code)
    fragments = [keys.PREFIX] + [k.template.split("{")[0] for k in keys.KEYS]
    vocabulary = {str(s) for s in Status} | {
        v for lit in (model.ClaimOutcome, model.ScheduleOutcome, model.FinishOutcome,
                      model.HookOutcome, model.HookResult, model.WebhookStatus,
                      model.RetryOutcome)
        for v in get_args(lit)}
    bad = [s for s in strings if s in vocabulary or any(f in s for f in fragments if f)]
    assert bad == []


def test_the_lua_check_sees_literals() -> None:
    assert re.findall(r"'([^']*)'", "redis.call('HSET', k, 'status', 'waiting')") == [
        "HSET", "status", "waiting"]


def test_scripts_get_the_schema_from_keys() -> None:
    from dispatcher.store.scripts import source

    text = source("claim")
    assert text.startswith(keys.lua_prelude())
    for k in keys.KEYS:
        assert f"local function {k.name}_key(" in keys.lua_prelude()
    assert keys.JOB("abc") == "dispatcher:job:abc"
    assert keys.PENDING_INDEX("q", "e") == "dispatcher:pending:q:e"
