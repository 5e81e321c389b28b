-- credit.lua: add funds to a wallet once per idempotency key.  Called only by worker.wallet.WalletGate.
--
-- KEYS[1]  tollgate:{sN}:wallet:<wallet_id>   hash (see record_turn.lua)
-- KEYS[2]  tollgate:{sN}:credit:<wallet>:<key> string: set once the credit was applied
-- ARGV[1]  amount_nanos    integer string > 0
-- ARGV[2]  dedupe_ttl_s    seconds the key is remembered
--
-- Returns {balance, duplicate}: the balance after (integer string) and 1 if this key was applied before.
-- Errors: 'TOLLGATE_UNKNOWN_WALLET' when KEYS[1] does not exist (nothing changes).

if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('TOLLGATE_UNKNOWN_WALLET')
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {redis.call('HGET', KEYS[1], 'balance'), 1}
end
-- HINCRBY first: if it fails (64-bit overflow) the key is not spent and nothing changed
redis.call('HINCRBY', KEYS[1], 'balance', ARGV[1])
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
return {redis.call('HGET', KEYS[1], 'balance'), 0}
