-- admit_record_turn.lua: record_turn.lua after the HTTP API's admission of its request (lib_admit.lua):
-- KEYS[1..6] and ARGV[1..9] as record_turn.lua's, then the admission's keys from KEYS[7] and its
-- arguments from ARGV[10].  A request the admission refuses (revoked key, a rate limit exhausted)
-- returns {'admit', revoked, answers..} and nothing of its turn runs (nothing debited, queued or
-- remembered); an admitted one returns record_turn.lua's reply or error.  Only on a Redis that is not
-- a cluster: the admission's keys are outside the wallet's hash slot.
local refused = admit(7, 10)
if refused then return refused end
local reply = record_one(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6],
                         ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
flush_counts()
flush_seen()
return reply
