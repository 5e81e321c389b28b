-- release.lua: give back a reservation's hold (abandoned, or expired).  Called only by
-- worker.gate.gate.WalletGate.
--
-- KEYS[1]  tollgate:{sN}:wallet:<wallet_id>      hash (see record_turn.lua)
-- KEYS[2]  tollgate:{sN}:hold:<reservation_id>   hash: wallet, amount, expires_ms
-- KEYS[3]  tollgate:{sN}:holds                   zset: reservation_id by expiry (ms)
-- ARGV[1]  reservation_id
--
-- Returns the amount released (integer string), '0' if the hold was already settled or released,
-- or belongs to another wallet (then nothing changes: that wallet's 'held' must not be stranded).

local hold = redis.call('HMGET', KEYS[2], 'amount', 'wallet')
local amount = hold[1]
if amount and KEYS[1] ~= string.match(KEYS[1], '^(.-:wallet:)') .. hold[2] then
  return '0'
end
redis.call('ZREM', KEYS[3], ARGV[1])
if not amount then
  return '0'
end
if amount ~= '0' then
  redis.call('HINCRBY', KEYS[1], 'held', '-' .. amount)
end
redis.call('DEL', KEYS[2])
return amount
