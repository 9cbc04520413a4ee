-- cancel: a tracked job that has not started is marked cancelled and never runs (the take
-- step drops it) and gives up its unique key; a running one is asked to stop
-- (job.cancelled in the consumer); a finished one is left alone.
-- KEYS[1] record    HASH  the job's record
-- KEYS[2] conf      HASH  the topic's settings the masters publish (result_ttl)
-- ARGV[1] job id   ARGV[2] now (epoch s)
-- returns the state found, or '' for an unknown job
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return '' end
if state == 'queued' or state == 'delayed' or state == 'retrying' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[2])
  redis.call('EXPIRE', KEYS[1], redis.call('HGET', KEYS[2], 'result_ttl') or 86400)
  local unique = redis.call('HGET', KEYS[1], 'unique')
  if unique and redis.call('GET', unique) == ARGV[1] then redis.call('DEL', unique) end
elseif state == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
end
return state
