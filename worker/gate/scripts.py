"""The gate's Lua scripts (``worker/gate/lua``): their source with the shared helpers prepended,
registered on a client by :class:`worker.gate.gate.WalletGate`."""

from __future__ import annotations

from importlib.resources import files


def lua_source(name: str, *libs: str) -> str:
    """A script from ``worker/gate/lua``, with the shared helpers of ``lib_int.lua`` and then ``libs``
    prepended."""
    lua = files("worker.gate").joinpath("lua")
    return "\n".join(lua.joinpath(n).read_text() for n in ("lib_int.lua", *libs, name))
