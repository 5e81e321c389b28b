-- lib_turn.lua: record_one(KEYS, ARGV), the decision for one turn; prepended (after lib_int.lua)
-- to record_turn.lua (one turn per call) and record_turns.lua (many turns of one shard per call).
-- KEYS and ARGV are the parameters of one turn, as record_turn.lua's header lists them; an error
-- is returned as redis.error_reply (the table {err = …}), never raised, so a batch goes on.

-- int_cmp(a, b) comes from lib_int.lua

local function record_one(KEYS, ARGV)
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

  -- every field the decision may need, in one call (held may change below, when a hold is released)
  local w = redis.call('HMGET', KEYS[1], 'mode', 'limited', 'balance', 'blocked', 'enterprise', 'held', 'level',
                       'share_bps', 'trial_left', 'trial_then')
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
  local held = w[6] or '0'
  if covered then  -- the hold was just given back: read the total again
    held = redis.call('HGET', KEYS[1], 'held') or '0'
  end
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
    trial_then = w[10] or 'pause'
    if int_cmp(w[9] or '0', '0') > 0 then
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
    local left = w[9] or '0'
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
               'lv', w[7] or 'app_usage', 'sb', w[8] or '0', 'tt', trial_tokens, 'bl', billable)
    if redis.call('SET', KEYS[4], '1', 'PX', ARGV[4], 'NX') then
      kick = 1
    end
  else
    redis.call('HINCRBY', KEYS[1], 'denied_turns', 1)
  end

  redis.call('SET', KEYS[2], status .. '|' .. balance .. '|' .. action .. '|' .. billed .. '|' .. ARGV[1], 'EX', ARGV[3])
  return {status, balance, action, billed, 0, kick, ARGV[1]}
end
