-- cancel: a tracked job that has not started is marked cancelled and never runs (the take
-- step drops it) and gives up its unique key; a running one is asked to stop
-- (job.cancelled in the consumer); a finished one is left alone. Each cancel that the take
-- or settle step must still see through is counted in KEYS[2] (so that, while it is 0,
-- they need not look for cancels job by job).
-- KEYS[1] record    HASH  the job's record
-- KEYS[2] cancels   STRING  cancels pending
-- ARGV[1] job id   ARGV[2] now (epoch s)
-- returns the state found, or '' for an unknown job
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return '' end
if state == 'queued' or state == 'delayed' or state == 'retrying' then
  -- no expiry yet: the record must outlive the queued envelope, which the take step drops
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[2])
  redis.call('INCR', KEYS[2])
  local unique = redis.call('HGET', KEYS[1], 'unique')
  if unique and redis.call('GET', unique) == ARGV[1] then redis.call('DEL', unique) end
elseif state == 'running' and redis.call('HGET', KEYS[1], 'cancel') ~= '1' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  redis.call('INCR', KEYS[2])
end
return state
