"""The gate's Lua scripts (``worker/gate/lua``): their source with the shared helpers prepended,
registered on a client by :class:`worker.gate.gate.WalletGate`."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def lua_source(name: str, *libs: str) -> str:
    """A script from ``worker/gate/lua``, with the shared helpers of ``lib_int.lua`` and then ``libs``
    prepended (read once per process: a gate is made per event loop, see ``worker.gate.aio``)."""
    lua = files("worker.gate").joinpath("lua")
    return "\n".join(lua.joinpath(n).read_text() for n in ("lib_int.lua", *libs, name))


#: the helpers the turn scripts need after lib_int.lua, in order: the turn_id memory, then the decision
TURN_LIBS = ("lib_seen.lua", "lib_turn.lua")


def turn_script_source(name: str) -> str:
    """``record_turn.lua`` or ``record_turns.lua`` with every helper it needs (lib_int, lib_seen,
    lib_turn): the one source both the sync gate and an asyncio gate register."""
    return lua_source(name, *TURN_LIBS)
