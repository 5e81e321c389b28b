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


def _as_function(name: str, source: bytes | str) -> str:
    """A script's source as ``local function name(KEYS, ARGV)``: its own KEYS and ARGV tables."""
    text = source.decode() if isinstance(source, bytes) else source
    return f"local function {name}(KEYS, ARGV)\n{text}\nend\n"


@cache
def admit_turn_script_source() -> str:
    """``admit_record_turn.lua``: ``record_turn.lua`` after the HTTP API's admission (key revocation
    and rate limits, ``lib_admit.lua``), with the rate-limit library's own scripts (``limits``'
    ``incr_expire.lua`` and ``acquire_moving_window.lua``, verbatim) as its functions ``limit_fixed``
    and ``limit_moving``."""
    from limits.storage import RedisStorage  # the API's rate-limit library: its scripts, not a copy

    lua = files("worker.gate").joinpath("lua")
    parts = [lua.joinpath(n).read_text() for n in ("lib_int.lua", *TURN_LIBS)]
    parts.append(_as_function("limit_fixed", RedisStorage.SCRIPT_INCR_EXPIRE))
    parts.append(_as_function("limit_moving", RedisStorage.SCRIPT_ACQUIRE_MOVING_WINDOW))
    parts += [lua.joinpath(n).read_text() for n in ("lib_admit.lua", "admit_record_turn.lua")]
    return "\n".join(parts)
