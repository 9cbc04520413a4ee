-- progress: a running tracked job says how far it is; the reply says whether it was asked
-- to stop (job.cancelled).
-- KEYS[1] record    HASH  the job's record
-- ARGV[1] progress (JSON: fraction, message, at), '' to only ask
-- returns 1 when the job was cancelled, else 0
if ARGV[1] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'progress', ARGV[1])
end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return 1 end
return 0
