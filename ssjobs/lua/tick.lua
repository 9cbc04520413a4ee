-- tick: enqueue one periodic job for a tick, once across every master that evaluates the
-- same schedule: the schedule's key holds the last tick enqueued, and a tick not later
-- than it is refused. So two masters (or a restarted one) never enqueue a tick twice, and
-- one whose clock runs late never enqueues a tick the fleet already had.
-- KEYS[1] ready     LIST
-- KEYS[2] last      STRING  the last tick enqueued (epoch seconds)
-- KEYS[3] conf      HASH  the topic's settings the masters publish (track)
-- ARGV[1] the tick (epoch seconds)   ARGV[2] the envelope   ARGV[3] now
-- returns 1 when this call enqueued the tick, 0 when it was enqueued already
local last = tonumber(redis.call('GET', KEYS[2]) or '-1')
if tonumber(ARGV[1]) <= last then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('LPUSH', KEYS[1], ARGV[2])
if redis.call('HGET', KEYS[3], 'track') == '1' then
  local id = head(ARGV[2])
  if id then
    local now = tonumber(ARGV[3])
    set_record(string.sub(KEYS[1], 1, -7), id, 'queued', {attempts = 0, enqueued_at = now},
               now, 0)
  end
end
return 1
