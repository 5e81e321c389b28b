-- lib_seen.lua: the gate's memory of turn_ids (idempotency), prepended (after lib_int.lua, before
-- lib_turn.lua) to record_turn.lua, record_turns.lua and seen.lua.  Documented in worker/gate/dedupe.py.
--
-- A turn_id in its scope (enterprise_id, wallet_id) is remembered by its fingerprint f: 13 base64
-- characters (78 bits) of a keyed BLAKE2b computed by the caller (worker.gate.dedupe.fingerprint).  Fingerprints live in small
-- hashes that stay listpack-encoded (field f, value the first answer packed by pack_answer), per shard
-- tag, per time bucket b = floor(now_s / W) with W = dedupe_ttl_s, per address:
--
--   <tag>:seen:<W>:<b>       hash  n (sub-hashes of the bucket), c (fingerprints in it)
--   <tag>:seen:<W>:<b>:<a>   hash  '' → '' (a sentinel, so the key never empties and keeps its
--                                  expiry), f → answer, for a in 0 .. n-1
--
-- Every key of a bucket expires at (b + 2) * W + 60 (EXPIREAT, set when the key is made; no per-field
-- TTL): a turn_id recorded at t in bucket b is remembered until at least t + W.  A lookup reads the
-- current bucket and the one before.  The address of f is linear hashing (Litwin) on h, the 30 bits
-- of f's first 5 characters: with n = 2^L + s sub-hashes, a = h mod 2^L, or h mod 2^(L+1) when that is
-- below s.  At the end of a script run, while c > SEEN_LOAD * n, sub-hash s is split: the fingerprints
-- whose bit L of h is set move to sub-hash s + 2^L and n grows by one.  So sub-hashes hold SEEN_LOAD
-- to 2 * SEEN_LOAD fingerprints on average whatever the traffic, below hash-max-listpack-entries (128).
--
-- Keys written before this layout (<tag>:turn:<scoped turn_id>, a string per turn, the first answer as
-- 'status|balance|action|billed|cost', with a TTL of dedupe_ttl_s) are still read for a turn_id the
-- buckets do not hold (one GET of a missing key per new turn), so an upgrade, or an older gate still
-- running beside this one, forgets nothing.  Drop that read in a release once every Redis has run
-- this layout for dedupe_ttl_s.

-- the server's clock in ms, read once per script run (a hold's expiry and the bucket are taken from it)
local now_ms = false
local function clock_ms()
  if not now_ms then
    local t = redis.call('TIME')
    now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now_ms
end

-- fingerprints per sub-hash before one is split (average; unsplit sub-hashes reach about twice this)
local SEEN_LOAD = 40

-- the buckets read in this run: '<tag>:seen:<W>:<b>' → {meta, n, half (2^L), added, expire_at}, or
-- false for a bucket that does not exist (only the current bucket is ever created)
local seen_buckets = {}

local function seen_bucket(tag, W, b, create)
  local meta = tag .. ':seen:' .. W .. ':' .. string.format('%d', b)
  local st = seen_buckets[meta]
  if st == nil then
    local expire_at = string.format('%d', (b + 2) * W + 60)
    local n = redis.call('HGET', meta, 'n')
    if not n then
      if not create then
        seen_buckets[meta] = false
        return false
      end
      redis.call('HSET', meta, 'n', '1', 'c', '0')
      redis.call('EXPIREAT', meta, expire_at)
      redis.call('HSET', meta .. ':0', '', '')
      redis.call('EXPIREAT', meta .. ':0', expire_at)
      n = '1'
    end
    n = tonumber(n)
    local half = 1
    while half * 2 <= n do
      half = half * 2
    end
    st = {meta = meta, n = n, half = half, added = 0, expire_at = expire_at}
    seen_buckets[meta] = st
  elseif st == false and create then
    seen_buckets[meta] = nil
    return seen_bucket(tag, W, b, true)
  end
  return st
end

-- the 6 bits of each base64 character of a fingerprint
local B64 = {}
do
  local alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
  for i = 1, 64 do
    B64[string.byte(alphabet, i)] = i - 1
  end
end

-- h: the 30 bits of f's first 5 characters
local function seen_hash(f)
  local c1, c2, c3, c4, c5 = string.byte(f, 1, 5)
  return (((B64[c1] * 64 + B64[c2]) * 64 + B64[c3]) * 64 + B64[c4]) * 64 + B64[c5]
end

-- the sub-hash key of fingerprint f in bucket st
local function seen_sub(st, f)
  local h = seen_hash(f)
  local a = h % st.half
  if a < st.n - st.half then
    a = h % (2 * st.half)
  end
  return st.meta .. ':' .. string.format('%d', a)
end

-- the current and the previous bucket of shard tag for dedupe_ttl_s W (the current one created);
-- the clock is read once per run, so both are the same for every turn of the run
local seen_now_of = {}
local function seen_now(tag, W)
  local both = seen_now_of[tag]
  if not both then
    local width = tonumber(W)
    local b = math.floor(clock_ms() / 1000 / width)
    both = {seen_bucket(tag, width, b, true), seen_bucket(tag, width, b - 1, false)}
    seen_now_of[tag] = both
  end
  return both[1], both[2]
end

-- the first answer remembered for f anywhere but the current bucket (the previous bucket, then the
-- old layout's key K2), or false
local function seen_elsewhere(prev, f, K2)
  if prev then
    local v = redis.call('HGET', seen_sub(prev, f), f)
    if v then
      return v
    end
  end
  return redis.call('GET', K2)
end

-- the first answer remembered for f (current bucket, previous bucket, old layout), or false
local function seen_get(cur, prev, f, K2)
  return redis.call('HGET', seen_sub(cur, f), f) or seen_elsewhere(prev, f, K2)
end

-- remember answer v for f in the current bucket if f is not there yet: true when stored, else false
local function seen_add(cur, f, v)
  if redis.call('HSETNX', seen_sub(cur, f), f, v) == 1 then
    cur.added = cur.added + 1
    return true
  end
  return false
end

-- split sub-hash s = n − 2^L of bucket st (see the header); the new sub-hash is written before n
-- grows and the moved fields are deleted from the old one only after, so a failure half-way leaves
-- every fingerprint findable
local function seen_split(st)
  local s = st.n - st.half
  local src = st.meta .. ':' .. string.format('%d', s)
  local dst = st.meta .. ':' .. string.format('%d', s + st.half)
  local all = redis.call('HGETALL', src)
  local moved, gone = {'', ''}, {}
  for i = 1, #all, 2 do
    local f = all[i]
    if f ~= '' and math.floor(seen_hash(f) / st.half) % 2 == 1 then
      moved[#moved + 1] = f
      moved[#moved + 1] = all[i + 1]
      gone[#gone + 1] = f
    end
  end
  for i = 1, #moved, 400 do  -- bounded unpack (a sub-hash far above the load, e.g. after a burst)
    redis.call('HSET', dst, unpack(moved, i, math.min(i + 399, #moved)))
  end
  redis.call('EXPIREAT', dst, st.expire_at)
  redis.call('HINCRBY', st.meta, 'n', 1)
  for i = 1, #gone, 400 do
    redis.call('HDEL', src, unpack(gone, i, math.min(i + 399, #gone)))
  end
  st.n = st.n + 1
  if st.n == 2 * st.half then
    st.half = 2 * st.half
  end
end

-- at the end of a script run: count the fingerprints added and split what the load asks for
local function flush_seen()
  for _, st in pairs(seen_buckets) do
    if st and st.added > 0 then
      local c = redis.call('HINCRBY', st.meta, 'c', st.added)
      st.added = 0
      while c > SEEN_LOAD * st.n do
        seen_split(st)
      end
    end
  end
end

-- the first answer packed: one letter for status and action, the balance ('' for an unlimited
-- wallet), ':' cost, and ':' billed only when billed differs from the cost
local ANSWER_CODE = {accepted = {continue = 'A', pause = 'a'}, denied = {continue = 'D', pause = 'd'}}
local ANSWER_OF = {A = {'accepted', 'continue'}, a = {'accepted', 'pause'},
                   D = {'denied', 'continue'}, d = {'denied', 'pause'}}

local function pack_answer(status, balance, action, billed, cost)
  local v = ANSWER_CODE[status][action] .. balance .. ':' .. cost
  if billed ~= cost then
    v = v .. ':' .. billed
  end
  return v
end

-- a remembered answer (packed, or the old layout's 'status|balance|action|billed|cost') as the
-- scripts' reply for a duplicate: {status, balance, action, billed, 1, 0, cost}
local function unpack_answer(v)
  local code, b, c, bl = string.match(v, '^(%a)(-?%d*):(%d+):?(%d*)$')
  if code and ANSWER_OF[code] then
    if bl == '' then
      bl = c
    end
    return {ANSWER_OF[code][1], b, ANSWER_OF[code][2], bl, 1, 0, c}
  end
  local s, ob, a, obl, oc = string.match(v, '^(%a+)|(-?%d*)|(%a+)|(%d+)|(%d+)$')
  return {s, ob, a, obl, 1, 0, oc}
end
