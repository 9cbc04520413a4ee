-- fetch: promote due delayed jobs, then move up to N jobs from ready into the worker's
-- in-flight list, atomically (reliable fetch).
-- KEYS[1] ready     LIST  producers LPUSH, workers take from the right (FIFO)
-- KEYS[2] delayed   ZSET  envelope -> due time (epoch seconds)
-- KEYS[3] inflight  LIST  this worker's in-flight jobs, newest on the left
-- ARGV[1] max jobs to take (>= 1)
-- ARGV[2] now (epoch seconds)
-- ARGV[3] max delayed jobs to promote in this call
-- returns {jobs taken (oldest first), next_due}: next_due is '' unless no job was taken,
-- then the due time of the next delayed job ('' if none), so an idle worker knows when to
-- look again
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
if #due > 0 then
  redis.call('ZREM', KEYS[2], unpack(due))
  redis.call('LPUSH', KEYS[1], unpack(due))
end
local items = redis.call('RPOP', KEYS[1], ARGV[1])
if not items then
  local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return {{}, nxt[2] or ''}
end
redis.call('LPUSH', KEYS[3], unpack(items))
return {items, ''}
