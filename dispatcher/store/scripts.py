"""Builds each Lua script from its file and the libraries it declares.

A script (``lua/<name>.lua``) or library (``lua/lib/<name>.lua``) names what it
needs on a first line ``--! uses: clock index``; the script sent to Redis is the
schema (``keys.lua_prelude()``), then those libraries in dependency order, then
the script. A script carries only the libraries it uses: Redis compiles the
whole text on every ``EVALSHA`` miss and keeps it in its script cache.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from dispatcher.store.keys import lua_prelude

USES = "--! uses:"


def _read(name: str, lib: bool) -> str:
    folder = resources.files("dispatcher.store") / "lua"
    return (folder / "lib" / f"{name}.lua" if lib else folder / f"{name}.lua").read_text()


def uses(text: str) -> list[str]:
    """The libraries a script or library declares on its ``--! uses:`` line."""
    for line in text.splitlines():
        if line.startswith(USES):
            return line[len(USES):].split()
    return []


def _libraries(names: list[str], order: list[str], visiting: tuple[str, ...] = ()) -> None:
    for name in names:
        if name in order:
            continue
        if name in visiting:
            raise ValueError(f"lua/lib: cycle {' -> '.join((*visiting, name))}")
        _libraries(uses(_read(name, lib=True)), order, (*visiting, name))
        order.append(name)


@cache
def source(name: str) -> str:
    """The full text of script ``name`` as sent to Redis."""
    text = _read(name, lib=False)
    order: list[str] = []
    _libraries(uses(text), order)
    parts = [lua_prelude(), *(_read(lib, lib=True) for lib in order), text]
    return "\n".join(parts)
