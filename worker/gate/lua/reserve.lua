-- reserve.lua: hold funds for a turn before the LLM call (a two-phase transfer's pending half).
-- Called only by worker.gate.gate.WalletGate.
--
-- KEYS[1]  tollgate:{sN}:wallet:<wallet_id>      hash (see record_turn.lua); 'held' sums active holds
-- KEYS[2]  tollgate:{sN}:hold:<reservation_id>   hash: wallet, amount, expires_ms
-- KEYS[3]  tollgate:{sN}:holds                   zset: reservation_id by expiry (ms)
-- ARGV[1]  amount_nanos    integer string >= 0: the estimate to hold
-- ARGV[2]  expires_ms      integer: when the hold lapses (Unix ms); expire_holds releases it then
-- ARGV[3]  reservation_id
-- ARGV[4]  wallet_id
--
-- Returns {status, amount, balance, held, duplicate}: status 'reserved' | 'denied'; amount held
-- (integer string; '0' in development and track_only mode and inside a trial allowance); balance and held after (integer strings); duplicate 1 if
-- this reservation_id is already held and live (its first answer, nothing changes).  A hold of
-- this id whose expires_ms has passed (the server's TIME) is given back first and the id reserved
-- anew, since an expired hold covers no turn.
-- A production wallet grants a hold only if balance − held − amount >= 0 (compared exactly, as
-- integer strings), so with reservations the debits never exceed the credits.  An unlimited wallet
-- always grants; a blocked one never does.
-- Errors: 'TOLLGATE_UNKNOWN_WALLET', 'TOLLGATE_BAD_MODE' (nothing changes).

-- int_cmp(a, b) comes from lib_int.lua

local w = redis.call('HMGET', KEYS[1], 'mode', 'limited', 'balance', 'blocked', 'held', 'trial_left', 'trial_then')
if not w[1] then
  return redis.error_reply('TOLLGATE_UNKNOWN_WALLET')
end
local mode = w[1]
if mode ~= 'production' and mode ~= 'development' and mode ~= 'trial' and mode ~= 'track_only' then
  return redis.error_reply('TOLLGATE_BAD_MODE')
end
local existing = redis.call('HMGET', KEYS[2], 'amount', 'wallet', 'expires_ms')
if existing[1] then
  if existing[2] ~= ARGV[4] then  -- the id holds another wallet's funds: refuse, change nothing
    return {'denied', '0', w[3], w[5] or '0', 0}
  end
  local t = redis.call('TIME')
  if not existing[3] or tonumber(existing[3]) > tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) then
    return {'reserved', existing[1], w[3], w[5] or '0', 1}
  end
  -- its time is up (not yet swept): it covers nothing any more; give it back and decide afresh
  if existing[1] ~= '0' then
    redis.call('HINCRBY', KEYS[1], 'held', '-' .. existing[1])
  end
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[3])
  w[5] = redis.call('HGET', KEYS[1], 'held')
end
-- 'debit': holds like production; 'free': holds nothing (development, track_only, trial allowance left)
local rule = 'free'
if mode == 'production' then
  rule = 'debit'
elseif mode == 'trial' and int_cmp(w[6] or '0', '0') <= 0 then
  if w[7] == 'bill' then
    rule = 'debit'
  else
    return {'denied', '0', w[3], w[5] or '0', 0}  -- trial over, and it pauses
  end
end
local amount = ARGV[1]
if rule == 'free' and mode ~= 'trial' then
  amount = '0'
elseif w[4] then
  return {'denied', '0', w[3], w[5] or '0', 0}
elseif rule == 'free' then
  amount = '0'
end
redis.call('HINCRBY', KEYS[1], 'held', amount)
local new_held = redis.call('HGET', KEYS[1], 'held')
if rule == 'debit' and w[2] == '1' and int_cmp(w[3], new_held) < 0 then
  if amount ~= '0' then
    redis.call('HINCRBY', KEYS[1], 'held', '-' .. amount)
  end
  return {'denied', '0', w[3], redis.call('HGET', KEYS[1], 'held'), 0}
end
redis.call('HSET', KEYS[2], 'wallet', ARGV[4], 'amount', amount, 'expires_ms', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
return {'reserved', amount, w[3], new_held, 0}
