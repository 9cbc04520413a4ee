-- promote: move due delayed jobs to the back of ready.
-- KEYS[1] ready     LIST
-- KEYS[2] delayed   ZSET  envelope -> due time (epoch seconds)
-- ARGV[1] now (epoch seconds)
-- ARGV[2] max jobs to promote in this call
-- returns the number promoted
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due > 0 then
  redis.call('ZREM', KEYS[2], unpack(due))
  redis.call('LPUSH', KEYS[1], unpack(due))
end
return #due
