-- lib_admit.lua: the HTTP API's admission of a request (api_stub.deps.admit: is the caller's key
-- revoked, and its request counted against each of its rate limits), run in the same script as the
-- request's turn (admit_record_turn.lua) so a single POST /v1/turns makes one Redis round trip.
-- Prepended after limit_fixed(KEYS, ARGV) and limit_moving(KEYS, ARGV), which are the rate-limit
-- library's own scripts (limits' incr_expire.lua and acquire_moving_window.lua, verbatim, as
-- functions: the same commands on the same keys as the two-round-trip path).
--
-- KEYS[first]          the key's revocation marker (EXISTS: revoked)
-- KEYS[first + i]      the window of the key's limit i (i = 1 .. n, the limits in order)
-- ARGV[at]             'moving' | 'fixed': the strategy
-- ARGV[at + 1 ..]      per limit: its amount (requests allowed per window), then its script's
--                      ARGV: fixed (expiry_s, 1), moving (now, amount, expiry_s, 1)
--
-- Every limit counts the request, whether revoked or refused by another (as the pipelined commands of
-- the two-round-trip path).  Returns nil when admitted, else {'admit', revoked (0|1), answer_1, ..}:
-- answer_i the window's count (fixed) or 1|0 (moving: taken or not).
local function admit(first, at)
  local revoked = redis.call('EXISTS', KEYS[first])
  local moving = ARGV[at] == 'moving'
  local per = moving and 5 or 3
  local reply = {'admit', revoked}
  local refused = revoked ~= 0
  local i = 1
  while KEYS[first + i] do
    local base = at + (i - 1) * per
    local args = {}
    for j = 2, per do args[j - 1] = ARGV[base + j] end
    local answer
    if moving then
      answer = limit_moving({KEYS[first + i]}, args) and 1 or 0
      if answer == 0 then refused = true end
    else
      answer = tonumber(limit_fixed({KEYS[first + i]}, args))
      if answer > tonumber(ARGV[base + 1]) then refused = true end
    end
    reply[#reply + 1] = answer
    i = i + 1
  end
  if refused then return reply end
  return nil
end
