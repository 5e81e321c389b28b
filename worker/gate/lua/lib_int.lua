-- lib_int.lua: prepended by worker.gate.gate to every script (Redis scripts cannot import).
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

-- int_sub(a, b): a − b of two integer strings within ±2^63, exact, as an integer string (each is
-- split into a high part and its last 9 digits, both exact as Lua numbers)
local function int_split(a)
  local neg = string.sub(a, 1, 1) == '-'
  local d = neg and string.sub(a, 2) or a
  local hi, lo = tonumber(string.sub(d, 1, -10)) or 0, tonumber(string.sub(d, -9))
  if neg then
    return -hi, -lo
  end
  return hi, lo
end

local function int_sub(a, b)
  local ah, al = int_split(a)
  local bh, bl = int_split(b)
  local h, l = ah - bh, al - bl
  if l >= 1000000000 then  -- carry: |l| < 2 * 10^9 here, < 10^9 after
    h, l = h + 1, l - 1000000000
  elseif l <= -1000000000 then
    h, l = h - 1, l + 1000000000
  end
  if h > 0 and l < 0 then  -- one sign for both parts
    h, l = h - 1, l + 1000000000
  elseif h < 0 and l > 0 then
    h, l = h + 1, l - 1000000000
  end
  if h == 0 then
    return string.format('%d', l)
  end
  return string.format('%d%09d', h, math.abs(l))
end
