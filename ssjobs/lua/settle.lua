-- settle: finish a fetched batch and (optionally) fetch the next one, in one round trip.
-- The worker's in-flight list holds exactly the batch, so it is dropped whole; failures and
-- unstarted jobs are re-added; then, like fetch.lua, up to ARGV[7] jobs are taken
-- (take.lua).
-- KEYS[1] ready     LIST
-- KEYS[2] delayed   ZSET
-- KEYS[3] inflight  LIST  this worker's in-flight jobs
-- KEYS[4] dead      LIST  dead-lettered envelopes (error in headers.error), newest left
-- KEYS[5] stats     HASH  processed, failed, retried, dead
-- ARGV[1] processed   ARGV[2] failed   ARGV[3] dead cap (max length of dead)
-- ARGV[4] n_retry     ARGV[5] n_dead   ARGV[6] n_return
-- ARGV[7] jobs to fetch next (0: none)   ARGV[8] now (epoch s)   ARGV[9] promote limit
-- then n_retry pairs (due time, envelope), n_dead envelopes, n_return envelopes
-- (unstarted jobs, oldest first: they go back to the front of ready in order)
-- returns {jobs fetched (oldest first), next_due} as fetch.lua does
redis.call('DEL', KEYS[3])
local n_retry, n_dead, n_return = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local i = 10
for _ = 1, n_retry do
  redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for _ = 1, n_dead do
  redis.call('LPUSH', KEYS[4], ARGV[i])
  i = i + 1
end
if n_dead > 0 then
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[3]) - 1)
end
for j = i + n_return - 1, i, -1 do
  redis.call('RPUSH', KEYS[1], ARGV[j])
end
if ARGV[1] ~= '0' then redis.call('HINCRBY', KEYS[5], 'processed', ARGV[1]) end
if ARGV[2] ~= '0' then redis.call('HINCRBY', KEYS[5], 'failed', ARGV[2]) end
if n_retry > 0 then redis.call('HINCRBY', KEYS[5], 'retried', n_retry) end
if n_dead > 0 then redis.call('HINCRBY', KEYS[5], 'dead', n_dead) end
if ARGV[7] == '0' then
  return {{}, ''}
end
return take(KEYS[1], KEYS[2], KEYS[3], ARGV[7], ARGV[8], ARGV[9])
