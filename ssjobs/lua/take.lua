-- take (a library, not an operation): the reliable-fetch step of settle.lua, which the
-- broker loads with this file in front of it.
-- Promotes due delayed jobs to ready, then moves up to n jobs from ready (taken from the
-- right: FIFO) onto the left of the in-flight list. Returns the jobs taken, oldest first.
local function take(ready, delayed, inflight, n, now, promote_limit)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, promote_limit)
  if #due > 0 then
    redis.call('ZREM', delayed, unpack(due))
    redis.call('LPUSH', ready, unpack(due))
  end
  local items = redis.call('RPOP', ready, n)
  if not items then
    return {}
  end
  redis.call('LPUSH', inflight, unpack(items))
  return items
end

-- The entries of the in-flight list the worker does not hold yet, oldest first: all but the
-- `keep` oldest (the rightmost), which it already has.
local function unheld(inflight, keep)
  local len = redis.call('LLEN', inflight)
  if len <= keep then
    return {}
  end
  local newest_first = redis.call('LRANGE', inflight, 0, len - keep - 1)
  local out = {}
  for j = #newest_first, 1, -1 do
    out[#out + 1] = newest_first[j]
  end
  return out
end

local function next_due(delayed)
  local nxt = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  return nxt[2] or ''
end
