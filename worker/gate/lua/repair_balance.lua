-- repair_balance.lua: set a wallet's balance to what the ledger says, only if the wallet has not
-- moved since it was read.  Called only by worker.gate.gate.WalletGate (reconciliation).
--
-- KEYS[1]  tollgate:{sN}:wallet:<wallet_id>   hash (see record_turn.lua)
-- KEYS[2…] the gate's dedupe keys (credit:/adjust:) of the ledger entries the expected balance already
--          counts: marked applied, so a retried credit or adjustment cannot be applied a second time
-- ARGV[1]  expected_nanos   integer string: the balance to set
-- ARGV[2]  seen_balance     integer string: the balance read in the reconciliation snapshot
-- ARGV[3]  seen_accepted    the wallet's accepted_turns in that snapshot ('' if absent)
-- ARGV[4]  dedupe_ttl_s     lifetime of the keys set in KEYS[2…]
--
-- Returns 1 if the balance was set, 0 if the wallet moved (a turn or a credit since the snapshot:
-- nothing changes, the next run looks again).
-- Errors: 'TOLLGATE_UNKNOWN_WALLET' when KEYS[1] does not exist.

local w = redis.call('HMGET', KEYS[1], 'balance', 'accepted_turns')
if not w[1] then
  return redis.error_reply('TOLLGATE_UNKNOWN_WALLET')
end
if w[1] ~= ARGV[2] or (w[2] or '') ~= ARGV[3] then
  return 0
end
redis.call('HSET', KEYS[1], 'balance', ARGV[1])
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], '1', 'EX', ARGV[4], 'NX')
end
return 1
