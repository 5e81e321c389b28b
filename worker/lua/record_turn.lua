-- record_turn.lua: decide, debit and enqueue one turn, atomically.  Called only by worker.wallet.WalletGate.
--
-- KEYS[1]  tollgate:{sN}:wallet:<wallet_id>   hash: balance (int nanos), mode, limited ('1'|'0'),
--                                              blocked (reason, optional), accepted_turns, denied_turns
-- KEYS[2]  tollgate:{sN}:turn:<wallet>:<turn_id> string: the first answer for this turn_id (idempotency)
-- KEYS[3]  tollgate:{sN}:outbox                stream of accepted turns not yet persisted
-- KEYS[4]  tollgate:{sN}:kick                  flag: a drain was asked for within the kick interval
-- KEYS[5]  tollgate:{sN}:hold:<reservation_id> hash: wallet, amount (a reservation's hold; may not exist)
-- KEYS[6]  tollgate:{sN}:holds                 zset: reservation_id by expiry (ms)
-- ARGV[1]  cost_nanos      integer string >= 0
-- ARGV[2]  payload         the turn as JSON (stored verbatim in the outbox entry field 't')
-- ARGV[3]  dedupe_ttl_s    seconds the answer is remembered (>= 24 h)
-- ARGV[4]  kick_ms         at most one drain kick per this many milliseconds
-- ARGV[5]  reservation_id  '' for none; else the hold this turn settles (released, then the cost debited)
-- ARGV[6]  require_hold    '1': deny the turn unless its hold exists (a pre-call reservation was refused)
-- ARGV[7]  enterprise_id   the turn's app; must equal the wallet's 'enterprise' field when it has one
-- ARGV[8]  tokens          prompt + completion tokens of the turn (integer string; trial allowance)
--
-- Wallet hash fields read besides balance: mode ('production' | 'development' | 'trial' |
-- 'track_only'), limited, blocked, enterprise, held, level ('platform' | 'app_usage'), share_bps (the
-- app creator's share of a level-2 charge, basis points), trial_left (tokens of trial allowance left,
-- may go below 0 by the last free turn), trial_then ('bill' | 'pause').
--
-- The outbox entry carries: t payload, b billed nanos, a action, m mode, bal balance after,
-- lv level, sb share_bps, tt trial tokens used by the turn, bl billable ('1' | '0').
--
-- Returns {status, balance, action, billed, duplicate, kick, cost}:
--   status   'accepted' | 'denied'
--   balance  balance after the turn as an integer string; '' for an unlimited wallet
--   action   'continue' | 'pause'
--   billed   nanos debited, integer string
--   duplicate 1 if turn_id was seen before (the first answer is returned, nothing changes), else 0
--   kick     1 if the caller should ask for a drain now, else 0
--   cost     cost_nanos of the first answer, integer string
-- Errors (nothing changes): 'TOLLGATE_UNKNOWN_WALLET' when KEYS[1] does not exist,
--   'TOLLGATE_BAD_MODE' when the wallet's mode is not one of the four,
--   'TOLLGATE_WRONG_ENTERPRISE' when the wallet belongs to another app.
--
-- Post-hoc policy: a turn is accepted while the available balance (balance − held) before it is > 0
-- (it already happened, so it may overdraw by at most itself) and the chat must then pause; at an
-- available balance <= 0 it is denied and not debited.  A turn settling its reservation releases the
-- hold and is debited its actual cost (any excess over the hold becomes debt, and the chat pauses).  A production wallet with a 'blocked' reason (e.g. its budget is spent) is denied whatever
-- its balance.  Development and track_only modes record the turn and never debit or block (track_only
-- apps pay a flat monthly fee instead).  Trial mode records a turn for free while trial_left > 0
-- (taking its tokens from the allowance; the turn that crosses zero is still free), then bills as
-- production (trial_then 'bill') or denies and pauses (trial_then 'pause').  Money is added with
-- HINCRBY (64-bit integers) and read back as strings: never summed in Lua doubles.

-- int_cmp(a, b) comes from lib_int.lua (prepended)

local function release_hold()
  if ARGV[5] == '' then
    return false
  end
  local hold = redis.call('HMGET', KEYS[5], 'amount', 'wallet')
  local amount = hold[1]
  if amount and KEYS[1] ~= string.match(KEYS[1], '^(.-:wallet:)') .. hold[2] then
    return false  -- another wallet's hold: not ours to settle (its 'held' would be stranded)
  end
  if amount then
    if amount ~= '0' then
      redis.call('HINCRBY', KEYS[1], 'held', '-' .. amount)
    end
    redis.call('DEL', KEYS[5])
    redis.call('ZREM', KEYS[6], ARGV[5])
  end
  return amount
end

local w = redis.call('HMGET', KEYS[1], 'mode', 'limited', 'balance', 'blocked', 'enterprise')
local mode = w[1]
if not mode then
  return redis.error_reply('TOLLGATE_UNKNOWN_WALLET')
end
if w[5] and w[5] ~= ARGV[7] then  -- an app may only charge its own wallets (checked before any answer)
  return redis.error_reply('TOLLGATE_WRONG_ENTERPRISE')
end

local seen = redis.call('GET', KEYS[2])
if seen then
  release_hold()  -- a retry's new hold for a turn already settled is given back
  local status, balance, action, billed, cost = string.match(seen, '^(%a+)|(-?%d*)|(%a+)|(%d+)|(%d+)$')
  return {status, balance, action, billed, 1, 0, cost}
end

if mode ~= 'production' and mode ~= 'development' and mode ~= 'trial' and mode ~= 'track_only' then
  return redis.error_reply('TOLLGATE_BAD_MODE')
end
local limited = w[2] == '1'
local balance = w[3]
local covered = release_hold()
local held = redis.call('HGET', KEYS[1], 'held') or '0'
local status = 'accepted'
local action = 'continue'
local billed = '0'
local kick = 0
local trial_tokens = '0'
local billable = '0'

-- the rule this turn is decided by: 'debit' (production, or trial past its allowance when it bills),
-- 'free' (development, track_only), 'trial' (inside the trial allowance) or 'trial_over' (paused)
local rule = 'free'
local trial_then = 'pause'
if mode == 'production' then
  rule = 'debit'
elseif mode == 'trial' then
  trial_then = redis.call('HGET', KEYS[1], 'trial_then') or 'pause'
  if int_cmp(redis.call('HGET', KEYS[1], 'trial_left') or '0', '0') > 0 then
    rule = 'trial'
  elseif trial_then == 'bill' then
    rule = 'debit'
  else
    rule = 'trial_over'
  end
end

if rule == 'debit' then
  if w[4] or (ARGV[6] == '1' and not covered) or (limited and not covered and int_cmp(balance, held) <= 0) then
    status = 'denied'
    action = 'pause'
  else
    billed = ARGV[1]
    billable = '1'
    if billed ~= '0' then
      redis.call('HINCRBY', KEYS[1], 'balance', '-' .. billed)
      balance = redis.call('HGET', KEYS[1], 'balance')
    end
    if limited and int_cmp(balance, held) <= 0 then
      action = 'pause'
    end
  end
elseif rule == 'trial_over' or (rule == 'trial' and w[4]) then
  status = 'denied'
  action = 'pause'
elseif rule == 'trial' then
  trial_tokens = ARGV[8]
  local left = redis.call('HGET', KEYS[1], 'trial_left')
  if ARGV[8] ~= '0' then  -- HINCRBY refuses '-0'
    left = tostring(redis.call('HINCRBY', KEYS[1], 'trial_left', '-' .. ARGV[8]))
  end
  if int_cmp(left, '0') <= 0 and (trial_then == 'pause' or (limited and int_cmp(balance, held) <= 0)) then
    action = 'pause'
  end
end

if not limited then
  balance = ''
end

if status == 'accepted' then
  redis.call('HINCRBY', KEYS[1], 'accepted_turns', 1)
  redis.call('XADD', KEYS[3], '*', 't', ARGV[2], 'b', billed, 'a', action, 'm', mode, 'bal', balance,
             'lv', redis.call('HGET', KEYS[1], 'level') or 'app_usage',
             'sb', redis.call('HGET', KEYS[1], 'share_bps') or '0', 'tt', trial_tokens, 'bl', billable)
  if redis.call('SET', KEYS[4], '1', 'PX', ARGV[4], 'NX') then
    kick = 1
  end
else
  redis.call('HINCRBY', KEYS[1], 'denied_turns', 1)
end

redis.call('SET', KEYS[2], status .. '|' .. balance .. '|' .. action .. '|' .. billed .. '|' .. ARGV[1], 'EX', ARGV[3])
return {status, balance, action, billed, 0, kick, ARGV[1]}
