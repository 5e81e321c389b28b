-- record_turns.lua: decide, debit and enqueue many turns of one outbox shard in one call, in order,
-- each exactly as record_turn.lua would (record_one() of lib_turn.lua, prepended).  Called only by
-- worker.wallet.WalletGate.record_turns.
--
-- ARGV[1]  n: the number of turns
-- KEYS     6 per turn, turn i at KEYS[6(i-1)+1 .. 6i], as record_turn.lua's KEYS[1..6] (one shard's
--          hash tag for all: the call runs in one slot)
-- ARGV     8 per turn after ARGV[1], turn i at ARGV[8(i-1)+2 .. 8i+1], as record_turn.lua's ARGV[1..8]
--
-- Returns an array of n replies, each record_turn.lua's reply or its error (as an error element).
-- Turns are decided one after the other: a turn sees the balance the turns before it left.  A Redis
-- runtime error in one turn (none is expected: inputs are checked by the caller) is caught and
-- answered as that turn's error element; the others are decided as usual.

local n = tonumber(ARGV[1])
local out = {}
for i = 1, n do
  -- a runtime error (e.g. HINCRBY past 2^63) fails this turn alone, as an error element: the turns
  -- before it stay applied and say so, the ones after it are still decided
  local ok, reply = pcall(record_one, KEYS, ARGV, 6 * (i - 1), 8 * (i - 1) + 1)
  if ok then
    out[i] = reply
  else
    out[i] = redis.error_reply(tostring(reply))
    forget_wallets()  -- the turn may have stopped between a write and its cache update: read again
  end
end
flush_counts()
return out
