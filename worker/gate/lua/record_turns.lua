-- record_turns.lua: decide, debit and enqueue many turns of one outbox shard in one call, in order,
-- each exactly as record_turn.lua would (record_one() of lib_turn.lua, prepended).  Called only by
-- worker.gate.gate.WalletGate.record_turns.  What every turn of the shard shares is passed once:
--
-- KEYS[1..3]  the shard's outbox, kick flag and holds index (record_turn.lua's KEYS[3], [4], [6])
-- ARGV[1]     n: the number of turns
-- ARGV[2..3]  dedupe_ttl_s and kick_ms (record_turn.lua's ARGV[3], [4])
-- turn i (1..n):
--   KEYS[3i+1 .. 3i+3]   its wallet, turn_id and hold keys (record_turn.lua's KEYS[1], [2], [5])
--   ARGV[7i-3 .. 7i+3]   its cost, payload, reservation_id, require_hold, enterprise_id, tokens and
--                        turn_id fingerprint (record_turn.lua's ARGV[1], [2], [5], [6], [7], [8], [9])
-- Every key carries the shard's hash tag: the call runs in one slot.
--
-- Returns an array of n replies, each record_turn.lua's reply or its error (as an error element).
-- Turns are decided one after the other: a turn sees the balance the turns before it left.  A Redis
-- runtime error in one turn (none is expected: inputs are checked by the caller) is caught and
-- answered as that turn's error element; the others are decided as usual.

local n = tonumber(ARGV[1])
local ttl, kick_ms = ARGV[2], ARGV[3]
local outbox, kick, holds = KEYS[1], KEYS[2], KEYS[3]
local out = {}
for i = 1, n do
  local k, a = 3 * i, 7 * i - 4  -- this turn's keys are KEYS[k + 1 .. k + 3], its arguments ARGV[a + 1 .. a + 7]
  -- a runtime error (e.g. HINCRBY past 2^63) fails this turn alone, as an error element: the turns
  -- before it stay applied and say so, the ones after it are still decided
  local ok, reply = pcall(record_one, KEYS[k + 1], KEYS[k + 2], outbox, kick, KEYS[k + 3], holds,
                          ARGV[a + 1], ARGV[a + 2], ttl, kick_ms, ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6],
                          ARGV[a + 7])
  if ok then
    out[i] = reply
  else
    out[i] = redis.error_reply(tostring(reply))
    forget_wallets()  -- the turn may have stopped between a write and its cache update: read again
  end
end
flush_counts()
flush_seen()
return out
