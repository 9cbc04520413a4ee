-- lib (a library, not an operation): what several scripts share. The broker loads this
-- file in front of settle.lua, push.lua, promote.lua, recover.lua and requeue_dead.lua
-- (Redis scripts cannot include one another). Every key a function touches carries the
-- topic's hash tag: `base` is "P:{T}", and keys made from it stay in the topic's slot.

-- What a priority push leaves in ready to wake a waiting worker, which then drops it.
local NUDGE = 'ssjobs:nudge'

-- Envelope layout: 0x97, version, id, topic, attempts, enqueued_at, headers, payload.
-- id, attempts and headers without decoding the payload; nil for anything else.
local function head(env)
  if string.byte(env, 1) ~= 0x97 then return nil end
  local ok, _, _, id, _, attempts, _, headers = pcall(cmsgpack.unpack_limit, env, 6, 1)
  if not ok or type(id) ~= 'string' or type(headers) ~= 'table' then return nil end
  return id, attempts, headers
end

-- A header map that is not the empty one: only then are the headers worth decoding.
local function has_headers(env)
  -- the fixed prefix: 0x97 0x01, then id and topic (str), attempts (int), enqueued_at
  -- (float64, 0xcb + 8 bytes); an empty map is the single byte 0x80 after them
  local ok, offset = pcall(cmsgpack.unpack_limit, env, 5, 1)
  return ok and string.byte(env, offset + 1) ~= 0x80
end

-- Priority jobs wait in a ZSET, highest priority first (lowest score), FIFO within one
-- priority (the score grows with the push time).
local function prio_score(priority, now)
  return (9 - priority) * 1e13 + math.floor(now * 1000)
end

-- Put a due job where it waits: its priority's place, or the back of ready.
local function route(ready, prio, env, now)
  if has_headers(env) then
    local _, _, headers = head(env)
    local p = headers and tonumber(headers['priority'])
    if p and p > 0 then
      redis.call('ZADD', prio, prio_score(p, now), env)
      return
    end
  end
  redis.call('LPUSH', ready, env)
end

local function promote_due(ready, delayed, prio, now, limit)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, limit)
  if #due > 0 then
    redis.call('ZREM', delayed, unpack(due))
    for i = 1, #due do route(ready, prio, due[i], now) end
  end
  return #due
end

-- A tracked job's record (docs/protocol.md).
local function record_key(base, id) return base .. ':job:' .. id end

local function track(base, id, ttl, ...)
  local key = record_key(base, id)
  redis.call('HSET', key, ...)
  if ttl then redis.call('EXPIRE', key, ttl) end
end

-- A unique job's key, released when the job is done with: only if it is still this job's.
local function release_unique(base, headers, id)
  local unique = headers and headers['unique']
  if type(unique) == 'string' then
    local key = base .. ':unique:' .. unique
    if redis.call('GET', key) == id then redis.call('DEL', key) end
  end
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

-- How many jobs the topic's flow control lets a worker start now, and, when none, how long
-- until it may try again. `rules` = {rate_n, rate_period, concurrency}; judged on Redis'
-- clock, fleet-wide (every worker of every host shares these keys).
local CONCURRENCY_POLL_S = 0.25  -- a full topic frees a slot when some job ends: look again
local function allowance(k, rules, n)
  local wait = nil
  if rules.rate_n > 0 then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
    redis.call('ZREMRANGEBYSCORE', k.starts, '-inf', now - rules.rate_period)
    local free = rules.rate_n - redis.call('ZCARD', k.starts)
    if free <= 0 then
      local oldest = redis.call('ZRANGE', k.starts, 0, 0, 'WITHSCORES')
      wait = math.max(0.001, tonumber(oldest[2]) + rules.rate_period - now)
      n = 0
    elseif free < n then
      n = free
    end
    rules.clock = now
  end
  if rules.concurrency > 0 and n > 0 then
    local free = rules.concurrency - tonumber(redis.call('GET', k.running) or '0')
    if free <= 0 then
      wait = CONCURRENCY_POLL_S
      n = 0
    elseif free < n then
      n = free
    end
  end
  -- status shows the topic throttled until the limit lets a job start again
  if n == 0 then redis.call('HSET', k.stats, 'throttled_until', rules.now + (wait or 0)) end
  return n, wait
end

-- Count the jobs that start now against the limits.
local function started(k, rules, jobs)
  if #jobs == 0 then return end
  if rules.rate_n > 0 then
    local args = {}
    for i = 1, #jobs do
      args[#args + 1] = rules.clock
      args[#args + 1] = (head(jobs[i]) or '?') .. ':' .. rules.clock .. ':' .. i
    end
    redis.call('ZADD', k.starts, unpack(args))
    redis.call('EXPIRE', k.starts, math.ceil(rules.rate_period) + 1)
  end
  if rules.concurrency > 0 then redis.call('INCRBY', k.running, #jobs) end
end

-- Cancels not yet seen through (docs/protocol.md): while there are none, which is nearly
-- always, the take and settle steps need not look at each job's record for a cancel.
local function cancels_pending(base)
  return tonumber(redis.call('GET', base .. ':cancels') or '0') > 0
end

local function cancel_seen(base)
  if redis.call('DECR', base .. ':cancels') <= 0 then redis.call('DEL', base .. ':cancels') end
end

-- Tracked topics: a job about to run is marked running, unless it was cancelled (or asked
-- to stop while it ran, then requeued by a recovery): then it is dropped here and never
-- runs. Returns the jobs that may run.
local function admit(k, rules, jobs)
  if not rules.track then return jobs end
  local check = cancels_pending(k.base)
  local out = {}
  for i = 1, #jobs do
    local id, attempts, headers = head(jobs[i])
    local drop = false
    if id and check then
      local found = redis.call('HMGET', record_key(k.base, id), 'state', 'cancel')
      drop = found[1] == 'cancelled' or found[2] == '1'
    end
    if drop then  -- taken out of the queue for good
      release_unique(k.base, headers, id)
      cancel_seen(k.base)
      track(k.base, id, rules.ttl, 'state', 'cancelled', 'finished_at', rules.now)
    else
      if id then
        track(k.base, id, nil, 'state', 'running', 'started_at', rules.now,
              'attempts', attempts or 0)
      end
      out[#out + 1] = jobs[i]
    end
  end
  return out
end

-- Take up to n jobs onto the worker's in-flight list: due delayed jobs are promoted first,
-- then priority jobs come first, then ready (FIFO). Returns the jobs taken (oldest first)
-- and, when flow control held them back, the seconds until the next try.
local function take(k, inflight, n, promote_limit, rules)
  promote_due(k.ready, k.delayed, k.prio, rules.now, promote_limit)
  local wait
  n, wait = allowance(k, rules, n)
  if n <= 0 then return {}, wait end
  local items = {}
  local high = redis.call('ZPOPMIN', k.prio, n)  -- {member, score, ...}: none for most topics
  for i = 1, #high, 2 do items[#items + 1] = high[i] end
  if #items < n then
    local low = redis.call('RPOP', k.ready, n - #items)
    if low then
      for i = 1, #low do items[#items + 1] = low[i] end
    end
  end
  items = admit(k, rules, items)
  if #items > 0 then
    started(k, rules, items)
    redis.call('LPUSH', inflight, unpack(items))
  end
  return items, wait
end
