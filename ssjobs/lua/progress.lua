-- progress: a running tracked job says how far it is; the reply says whether it was asked
-- to stop (job.cancelled).
-- KEYS[1] jobs      HASH  job id -> record (lib.lua)
-- KEYS[2] progress  HASH  job id -> its latest progress, while it runs
-- KEYS[3] cancelling HASH job id -> 1 when asked to stop
-- ARGV[1] job id   ARGV[2] progress (JSON: fraction, message, at), '' to only ask
-- returns 1 when the job was cancelled, else 0
if ARGV[2] ~= '' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
return redis.call('HEXISTS', KEYS[3], ARGV[1])
