-- adjust.lua: add a signed amount to a wallet's balance once per key: a credit (top-up, grant,
-- refund) or a system entry the ledger already holds (e.g. the expiry debit of unused monthly
-- allowance).  Called only by worker.gate.gate.WalletGate (credit, adjust).
--
-- KEYS[1]  tollgate:{sN}:wallet:<wallet_id>    hash (see record_turn.lua); only 'balance' is changed
-- KEYS[2]  tollgate:{sN}:credit:<m>:<wallet>:<key> or tollgate:{sN}:adjust:<m>:<wallet>:<key>
--          string: set once the change was applied (<m>: the wallet id's length)
-- KEYS[3]  optional: the same key as written before the ids were length-prefixed
--          (…:credit:<wallet>:<key>); if it exists the change was applied before the upgrade.
--          Only read, never written: drop it once an upgrade is older than dedupe_ttl_s.
-- ARGV[1]  delta_nanos     signed integer string, non-zero ('-250000000' debits $0.25)
-- ARGV[2]  dedupe_ttl_s    seconds the key is remembered
--
-- Returns {balance, duplicate}: the balance after (integer string) and 1 if this key was applied before.
-- Errors: 'TOLLGATE_UNKNOWN_WALLET' when KEYS[1] does not exist (nothing changes).
-- The balance may go below zero: the caller decides the amount (the ledger caps it), the gate only
-- mirrors it.  HINCRBY does 64-bit integer arithmetic; nothing is summed in Lua doubles.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('TOLLGATE_UNKNOWN_WALLET')
end
if redis.call('EXISTS', KEYS[2]) == 1 or (KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1) then
  return {redis.call('HGET', KEYS[1], 'balance'), 1}
end
-- HINCRBY first: if it fails (64-bit overflow) the key is not spent and nothing changed
-- (its reply becomes a Lua double, exact only to 2^53: read the balance back as a string instead)
redis.call('HINCRBY', KEYS[1], 'balance', ARGV[1])
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
return {redis.call('HGET', KEYS[1], 'balance'), 0}
