-- cancel: a tracked job that has not started is cancelled (its record finished as such) and
-- never runs: the take step drops it; it gives up its unique key. A running one is asked to
-- stop (job.cancelled in the consumer); a finished one is left alone. Each job the take or
-- settle step must still see through is in the topic's cancelling hash and counted in
-- KEYS[2] (so that, while it is 0, they need not look for cancels job by job).
-- KEYS[1] workers   HASH  worker name -> batch it holds (their in-flight lists say who runs what)
-- KEYS[2] cancels   STRING  cancels pending
-- (and, in the topic's slot, the records (lib.lua), the cancelling hash and the conf hash
-- the masters publish, with result_ttl)
-- ARGV[1] job id   ARGV[2] now (epoch s)
-- returns the state found, or '' for an unknown job
local base = string.sub(KEYS[1], 1, -9)
local id, now = ARGV[1], tonumber(ARGV[2])
local rec = redis.call('HGET', base .. ':jobs', id)
if not rec then return '' end
local state, expires_at = record_parts(rec)
if FINISHED[state] then
  if expires_at <= now then return '' end  -- expired, not yet deleted
  return state
end
local function ask_to_stop()
  if redis.call('HSETNX', base .. ':cancelling', id, 1) == 1 then redis.call('INCR', KEYS[2]) end
end
if holder(base, KEYS[1], id) then
  ask_to_stop()
  return 'running'
end
local unique = record_fields(rec).unique
if unique and redis.call('GET', unique) == id then redis.call('DEL', unique) end
local ttl = tonumber(redis.call('HGET', base .. ':conf', 'result_ttl') or '86400') or 86400
move_on(base, id, 'cancelled', now, ttl, {})
ask_to_stop()  -- its envelope still waits: the take step drops it
return state
