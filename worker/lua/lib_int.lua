-- lib_int.lua: prepended by worker.wallet to every script (Redis scripts cannot import).
-- Money in the gate lives in 64-bit integers (HINCRBY); Lua numbers are doubles, exact only to 2^53,
-- so two balances are compared as integer strings.

-- int_cmp(a, b): compare two integer strings exactly: -1, 0 or 1
local function int_cmp(a, b)
  if #a < 16 and #b < 16 then  -- at most 15 digits: below 2^53, exact as Lua numbers
    local x, y = tonumber(a), tonumber(b)
    if x < y then
      return -1
    elseif x > y then
      return 1
    end
    return 0
  end
  local na, nb = string.sub(a, 1, 1) == '-', string.sub(b, 1, 1) == '-'
  if na ~= nb then
    return na and -1 or 1
  end
  local da = string.gsub(na and string.sub(a, 2) or a, '^0+', '')
  local db = string.gsub(nb and string.sub(b, 2) or b, '^0+', '')
  local c = 0
  if #da ~= #db then
    c = (#da > #db) and 1 or -1
  elseif da ~= db then
    c = (da > db) and 1 or -1
  end
  if na then
    c = -c
  end
  return c
end
