-- seen.lua: read or forget the remembered first answer of one turn_id (lib_seen.lua, prepended).
-- Called only by worker.gate.gate.WalletGate (remembered_answer, forget_turn).
--
-- KEYS[1]  tollgate:{sN}:outbox      the shard's outbox (names the shard tag; not touched)
-- KEYS[2]  tollgate:{sN}:turn:<n>:<enterprise>:<m>:<wallet>:<turn_id>  the old layout's key
-- ARGV[1]  'get' | 'forget'
-- ARGV[2]  dedupe_ttl_s (W)
-- ARGV[3]  the turn_id's fingerprint (worker.gate.dedupe.fingerprint)
--
-- 'get' returns the answer a retry would get now, {status, balance, action, billed, 1, 0, cost}, or
-- false when the turn_id is not remembered.  'forget' removes it from the current and the previous
-- bucket and the old layout's key and returns how many copies were removed (0 when not remembered):
-- the turn_id is then new to the gate, as after its window (tests and operators' repairs only).

local tag = string.sub(KEYS[1], 1, -8)
local W = tonumber(ARGV[2])
local f = ARGV[3]
local b = math.floor(clock_ms() / 1000 / W)
local cur, prev = seen_bucket(tag, W, b, false), seen_bucket(tag, W, b - 1, false)
if ARGV[1] == 'get' then
  local v = (cur and redis.call('HGET', seen_sub(cur, f), f)) or seen_elsewhere(prev, f, KEYS[2])
  if v then
    return unpack_answer(v)
  end
  return false
end
local removed = redis.call('DEL', KEYS[2])
for _, st in ipairs({cur, prev}) do
  if st and redis.call('HDEL', seen_sub(st, f), f) == 1 then
    removed = removed + 1
    redis.call('HINCRBY', st.meta, 'c', -1)
  end
end
return removed
