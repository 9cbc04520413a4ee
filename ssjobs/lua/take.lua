-- take (a library, not an operation): the reliable-fetch step shared by fetch.lua and
-- settle.lua, which the broker loads with this file in front of them.
-- Promotes due delayed jobs to ready, then moves up to n jobs from ready (taken from the
-- right: FIFO) onto the left of the in-flight list. Returns {jobs taken, oldest first,
-- next_due}: next_due is '' unless nothing was taken, then the due time of the next
-- delayed job ('' if none), so an idle worker knows when to look again.
local function take(ready, delayed, inflight, n, now, promote_limit)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, promote_limit)
  if #due > 0 then
    redis.call('ZREM', delayed, unpack(due))
    redis.call('LPUSH', ready, unpack(due))
  end
  local items = redis.call('RPOP', ready, n)
  if not items then
    local nxt = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
    return {{}, nxt[2] or ''}
  end
  redis.call('LPUSH', inflight, unpack(items))
  return {items, ''}
end
