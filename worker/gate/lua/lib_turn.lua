-- lib_turn.lua: record_one(K1..K6, A1..A9), the decision for one turn; prepended (after lib_int.lua
-- and lib_seen.lua) to record_turn.lua (one turn per call) and record_turns.lua (many turns of one
-- shard per call).  The turn's parameters are record_turn.lua's KEYS[1..6] and ARGV[1..9], as its
-- header lists them;
-- an error is returned as redis.error_reply (the table {err = …}), never raised, so a batch goes on.

-- int_cmp(a, b) comes from lib_int.lua

local kick_tried = false  -- per script run (a batch's turns are all on one shard)

-- The wallet hash fields record_one() reads (HMGET order), cached per wallet for this script run:
-- a script runs alone, so the only writes in between are this run's own, and record_one() applies
-- each of them to the cache as it makes it (balance, held, trial_left).  A batch with many turns of
-- one wallet reads its hash once.  Cleared by forget_wallets() when a turn fails half-way.
local WALLET_FIELDS = {'mode', 'limited', 'balance', 'blocked', 'enterprise', 'held', 'level', 'share_bps',
                       'trial_left', 'trial_then',
                       'require_hold',    -- w[11]: '1' when every charged turn needs a live hold of its own
                       'max_turn_nanos'}  -- w[12]: the most one turn may cost (integer string)
-- the most one turn may cost when the wallet hash has no max_turn_nanos (a wallet loaded before the
-- per-app limit existed): models.wallet.DEFAULT_MAX_TURN_COST_NANOS, $50 (a unit test keeps them equal)
local DEFAULT_MAX_TURN_NANOS = '50000000000'
local wallets = {}
-- accepted / denied turn counts per wallet key, added to the hash once per run by flush_counts()
local accepted, denied = {}, {}

local function wallet_fields(K1)
  local w = wallets[K1]
  if not w then
    w = redis.call('HMGET', K1, unpack(WALLET_FIELDS))
    if w[1] then
      wallets[K1] = w
    end
  end
  return w
end

local function forget_wallets()
  wallets = {}
end

-- the run's turn counts into the wallets' accepted_turns / denied_turns (reconciliation reads
-- accepted_turns to tell a busy wallet); called once at the end of every script run
local function flush_counts()
  for k, n in pairs(accepted) do
    redis.call('HINCRBY', k, 'accepted_turns', n)
  end
  for k, n in pairs(denied) do
    redis.call('HINCRBY', k, 'denied_turns', n)
  end
end

-- clock_ms() (the server clock, once per run) comes from lib_seen.lua

-- give back the hold this turn settles (K5, reservation A5); false when there is none, it is
-- another wallet's or its time is up (an expired hold is given back all the same: the sweeper would
-- release it); else the amount released (integer string): the turn is covered by a live hold
local function release_hold(K1, K5, K6, A5)
  if A5 == '' then
    return false
  end
  local hold = redis.call('HMGET', K5, 'amount', 'wallet', 'expires_ms')
  local amount = hold[1]
  if amount and K1 ~= string.match(K1, '^(.-:wallet:)') .. hold[2] then
    return false  -- another wallet's hold: not ours to settle (its 'held' would be stranded)
  end
  local expired = amount and hold[3] and tonumber(hold[3]) <= clock_ms()
  if amount then
    if amount ~= '0' then
      redis.call('HINCRBY', K1, 'held', '-' .. amount)
    end
    redis.call('DEL', K5)
    redis.call('ZREM', K6, A5)
  end
  if expired then
    return false
  end
  return amount
end

local MODES = {production = true, development = true, trial = true, track_only = true}
-- one-letter codes of the outbox entry's 'g' field (worker.gate.outbox: DECISION_CODES)
local ACTION_CODE = {continue = 'c', pause = 'p'}
local MODE_CODE = {production = 'P', development = 'D', trial = 'T', track_only = 'K'}
local LEVEL_CODE = {app_usage = 'a', platform = 'p'}

-- decide(w, A1, A6, A8, covered, held, K1): the turn's answer from the wallet's fields w (mode
-- valid), its cost A1, require_hold A6 and tokens A8, whether its hold was just given back (covered)
-- and the wallet's held total.  With the wallet key K1 the debit and the trial tokens are applied
-- (HINCRBY, the cache w kept equal); with K1 false they are only computed, in Lua numbers (the
-- caller made sure every figure is below 10^15) and nothing is written.
-- Reservations required (A6 '1', or the wallet's require_hold w[11] '1'): a charged turn without a
-- live hold of its own wallet (covered false) is denied; a covered turn costing more than the free
-- balance (balance − other holds, its own hold just given back) is debited the free balance only
-- (never below zero) and the rest is debt (the chat pauses).
-- Returns status, action, billed, billable, trial_tokens, balance ('' for an unlimited wallet),
-- the balance and trial tokens left after the turn (integer strings; false where unchanged), and the
-- debt: nanos of the cost not debited for want of funds (integer string).
local function decide(w, A1, A6, A8, covered, held, K1)
  local mode, limited, balance = w[1], w[2] == '1', w[3]
  local status, action, billed, billable, trial_tokens = 'accepted', 'continue', '0', '0', '0'
  local bal_after, left_after = false, false
  -- the rule this turn is decided by: 'debit' (production, or trial past its allowance when it bills),
  -- 'free' (development, track_only), 'trial' (inside the trial allowance) or 'trial_over' (paused)
  local rule = 'free'
  local trial_then = 'pause'
  if mode == 'production' then
    rule = 'debit'
  elseif mode == 'trial' then
    trial_then = w[10] or 'pause'
    if int_cmp(w[9] or '0', '0') > 0 then
      rule = 'trial'
    elseif trial_then == 'bill' then
      rule = 'debit'
    else
      rule = 'trial_over'
    end
  end

  local debt = '0'
  if rule == 'debit' then
    local required = A6 == '1' or w[11] == '1'
    if w[4] or (required and not covered) or (limited and not covered and int_cmp(balance, held) <= 0) then
      status = 'denied'
      action = 'pause'
    else
      billed = A1
      billable = '1'
      if required and limited then  -- charged from its hold plus the free balance only
        local free = int_sub(balance, held)
        if int_cmp(free, '0') <= 0 then
          billed, debt = '0', A1
        elseif int_cmp(A1, free) > 0 then
          billed, debt = free, int_sub(A1, free)
        end
        if debt ~= '0' then
          action = 'pause'
          if K1 then
            redis.call('HINCRBY', K1, 'debt', debt)
          end
        end
      end
      if billed ~= '0' then
        if not K1 then
          bal_after = string.format('%d', tonumber(balance or '0') - tonumber(billed))  -- no field: HINCRBY's 0
        else
          local after = redis.call('HINCRBY', K1, 'balance', '-' .. billed)
          if after > -9007199254740992 and after < 9007199254740992 then
            bal_after = string.format('%d', after)  -- exact below 2^53
          else
            bal_after = redis.call('HGET', K1, 'balance')  -- HINCRBY's reply became a Lua double: read the string
          end
          w[3] = bal_after
        end
        balance = bal_after
      end
      if limited and int_cmp(balance, held) <= 0 then
        action = 'pause'
      end
    end
  elseif rule == 'trial_over' or (rule == 'trial' and w[4]) then
    status = 'denied'
    action = 'pause'
  elseif rule == 'trial' then
    trial_tokens = A8
    local left = w[9] or '0'
    if A8 ~= '0' then  -- HINCRBY refuses '-0'
      if not K1 then
        left_after = string.format('%d', tonumber(left) - tonumber(A8))
      else
        left_after = string.format('%d', redis.call('HINCRBY', K1, 'trial_left', '-' .. A8))
        w[9] = left_after
      end
      left = left_after
    end
    if int_cmp(left, '0') <= 0 and (trial_then == 'pause' or (limited and int_cmp(balance, held) <= 0)) then
      action = 'pause'
    end
  end
  if not limited then
    balance = ''
  end
  return status, action, billed, billable, trial_tokens, balance, bal_after, left_after, debt
end

-- below 10^15 in magnitude (at most 15 characters) a difference of two integer strings is exact in Lua
local function small(a)
  return #a < 16
end

local function record_one(K1, K2, K3, K4, K5, K6, A1, A2, A3, A4, A5, A6, A7, A8, A9)
  -- this turn's keys and arguments, as parameters (no table per turn); A9 is the turn_id's
  -- fingerprint (lib_seen.lua), remembered in the buckets of the shard tag (K3 less ':outbox')
  local tag = string.sub(K3, 1, -8)

  -- every field the decision may need, in one call per wallet and run (held may change below, when
  -- a hold is released; the cache is kept equal to the hash)
  local w = wallet_fields(K1)
  local mode = w[1]
  if not mode then
    return redis.error_reply('TOLLGATE_UNKNOWN_WALLET')
  end
  if w[5] and w[5] ~= A7 then  -- an app may only charge its own wallets (checked before any answer)
    return redis.error_reply('TOLLGATE_WRONG_ENTERPRISE')
  end
  -- the app's per-turn cost limit (max_turn_nanos): a new turn above it is refused before any write
  -- (dedupe key unspent); a retry of a turn already decided still gets its first answer below
  local max_turn = w[12] or DEFAULT_MAX_TURN_NANOS
  local cur, prev = seen_now(tag, A3)
  if int_cmp(A1, max_turn) > 0 and not seen_get(cur, prev, A9, K2) then
    return redis.error_reply('TOLLGATE_TURN_COST_LIMIT ' .. A1 .. ' ' .. max_turn)
  end

  local status, action, billed, billable, trial_tokens, balance, bal_after, left_after, debt
  if A5 == '' and MODES[mode] and small(w[3] or '') and small(w[9] or '0') and small(A1) and small(A8) then
    -- fast path (no hold to settle, figures exact in Lua): decide first without writing, then one
    -- SET NX GET both records the answer and says whether the turn_id was seen; only a new turn's
    -- writes follow (the same figures decide() computed)
    status, action, billed, billable, trial_tokens, balance, bal_after, left_after, debt =
      decide(w, A1, A6, A8, false, w[6] or '0', false)
    local seen = seen_elsewhere(prev, A9, K2)
    if seen then
      return unpack_answer(seen)
    end
    if not seen_add(cur, A9, pack_answer(status, balance, action, billed, A1)) then
      return unpack_answer(redis.call('HGET', seen_sub(cur, A9), A9))
    end
    if bal_after then
      redis.call('HINCRBY', K1, 'balance', '-' .. billed)
      w[3] = bal_after
    end
    if left_after then
      redis.call('HINCRBY', K1, 'trial_left', '-' .. trial_tokens)
      w[9] = left_after
    end
  else
    -- the general path (a turn settling a hold, or figures past 10^15): the first answer if the
    -- turn_id was seen, else give the hold back, decide with the writes' own results, then record
    local seen = seen_get(cur, prev, A9, K2)
    if seen then
      if release_hold(K1, K5, K6, A5) then  -- a retry's new hold for a turn already settled is given back
        w[6] = redis.call('HGET', K1, 'held') or false
      end
      return unpack_answer(seen)
    end
    if not MODES[mode] then
      return redis.error_reply('TOLLGATE_BAD_MODE')
    end
    local covered = release_hold(K1, K5, K6, A5)
    local held = w[6] or '0'
    if covered then  -- the hold was just given back: read the total again
      held = redis.call('HGET', K1, 'held') or '0'
      w[6] = held
    end
    status, action, billed, billable, trial_tokens, balance, bal_after, left_after, debt =
      decide(w, A1, A6, A8, covered, held, K1)
    seen_add(cur, A9, pack_answer(status, balance, action, billed, A1))
  end

  local kick = 0
  if status == 'accepted' then
    -- 'g': the gate's decision, one field (worker.gate.outbox.parse_entry reads it):
    -- billed|balance|<action><mode><level><billable>|share_bps|trial_tokens|debt
    redis.call('XADD', K3, '*', 't', A2, 'g', billed .. '|' .. balance .. '|' .. ACTION_CODE[action] ..
               MODE_CODE[mode] .. (LEVEL_CODE[w[7] or 'app_usage'] or 'a') .. billable .. '|' ..
               (w[8] or '0') .. '|' .. trial_tokens .. '|' .. debt)
    if not kick_tried and redis.call('SET', K4, '1', 'PX', A4, 'NX') then
      kick = 1
    end
    kick_tried = true  -- one kick attempt per script run: the turns of a batch share one shard
    accepted[K1] = (accepted[K1] or 0) + 1
  else
    denied[K1] = (denied[K1] or 0) + 1
  end
  return {status, balance, action, billed, 0, kick, A1}
end
