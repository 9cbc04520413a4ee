-- lib (a library, not an operation): what several scripts share. The broker puts in front
-- of each script the definitions below that it uses (Redis scripts cannot include one
-- another; broker.with_lib), so every definition starts at a line `local ...` with its
-- comment right above it. Every key a function touches carries the topic's hash tag:
-- `base` is "P:{T}", and keys made from it stay in the topic's slot.

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

-- Priority jobs wait in delayed as jobs due before any other: a negative score, the
-- highest priority lowest, FIFO within one priority (the score grows with the push time).
-- So the take step finds them with the look at delayed it makes anyway: a topic that never
-- uses priorities pays nothing for them.
local function prio_score(priority, now)
  return -priority * 1e13 + math.floor(now * 1000)
end

-- Put a due job where it waits: its priority's place, or the back of ready.
local function route(ready, delayed, env, now)
  if has_headers(env) then
    local _, _, headers = head(env)
    local p = headers and tonumber(headers['priority'])
    if p and p > 0 then
      redis.call('ZADD', delayed, prio_score(p, now), env)
      return
    end
  end
  redis.call('LPUSH', ready, env)
end

-- Due delayed jobs (scores 0..now; not the priority jobs) to where they wait.
local function promote_due(ready, delayed, now, limit)
  local due = redis.call('ZRANGEBYSCORE', delayed, 0, now, 'LIMIT', 0, limit)
  if #due > 0 then
    redis.call('ZREM', delayed, unpack(due))
    for i = 1, #due do route(ready, delayed, due[i], now) end
  end
  return #due
end

-- Tracked jobs (docs/protocol.md, "Job records"): one hash per topic, P:{T}:jobs, job id ->
-- record, "<state> <expires_at> <msgpack map of the rest>" (expires_at is 0 until the job
-- finished). The map of a job not finished has no binary values (scripts and the worker
-- write it), so Lua may re-encode it; a finished one is only restated. Each finish appends
-- "<expires_at> <msgpack array of job ids>" to the list P:{T}:expiry, in time order, and
-- the settle step deletes the records of its expired entries (trim_expired): so storing a
-- batch's records is one command that overwrites fields the push made, and the deletes
-- come later.
local FINISHED = {succeeded = true, dead = true, cancelled = true}

-- state, expires_at and the encoded map of a record (one not in this form: itself, 0, '')
local function record_parts(rec)
  local a = string.find(rec, ' ', 1, true)
  local b = a and string.find(rec, ' ', a + 1, true)
  if not b then return rec, 0, '' end
  return string.sub(rec, 1, a - 1), tonumber(string.sub(rec, a + 1, b - 1)) or 0,
         string.sub(rec, b + 1)
end

local function record_state(rec) return string.match(rec, '^[^ ]*') end

local function record_fields(rec)
  local _, _, map = record_parts(rec)
  local ok, fields = pcall(cmsgpack.unpack, map)
  if ok and type(fields) == 'table' then return fields end
  return {}
end

-- List job id's record for deletion once expires_at has passed.
local function expire_later(base, expires_at, id)
  redis.call('RPUSH', base .. ':expiry', expires_at .. ' ' .. cmsgpack.pack({id}))
end

-- A job's record made of its state and fields; a finished one is listed for its expiry.
local function new_record(base, id, state, fields, now, ttl)
  local expires_at = 0
  if FINISHED[state] then
    fields.finished_at = fields.finished_at or now
    expires_at = math.ceil(now + ttl)
    expire_later(base, expires_at, id)
  end
  return state .. ' ' .. expires_at .. ' ' .. cmsgpack.pack(fields)
end

local function set_record(base, id, state, fields, now, ttl)
  redis.call('HSET', base .. ':jobs', id, new_record(base, id, state, fields, now, ttl))
end

-- A job's record moves on to `state`, its other fields updated by `changes`.
local function move_on(base, id, state, now, ttl, changes)
  local old = redis.call('HGET', base .. ':jobs', id)
  local fields = old and record_fields(old) or {attempts = 0, enqueued_at = now}
  for key, value in pairs(changes) do fields[key] = value end
  set_record(base, id, state, fields, now, ttl)
end

-- Delete the records of up to `entries` expired entries of the expiry list; a record that
-- was written again since (a dead job retried, say) is left alone.
local function trim_expired(base, now, entries)
  local expiry, jobs = base .. ':expiry', base .. ':jobs'
  for _ = 1, entries do
    local entry = redis.call('LINDEX', expiry, 0)
    if not entry or (tonumber(string.match(entry, '^%S+')) or 0) > now then return end
    redis.call('LPOP', expiry)
    local space = string.find(entry, ' ', 1, true) or 0
    local ok, ids = pcall(cmsgpack.unpack, string.sub(entry, space + 1))
    for _, id in ipairs(ok and type(ids) == 'table' and ids or {}) do
      local rec = redis.call('HGET', jobs, id)
      if rec then
        local state, expires_at = record_parts(rec)
        if FINISHED[state] and expires_at <= now then redis.call('HDEL', jobs, id) end
      end
    end
  end
end

-- Whether envelope env is job id's: the id is its third item, after 0x97 and the version.
local function is_job(env, id)
  local n = #id
  if n < 32 then
    return string.byte(env, 3) == 0xa0 + n and string.sub(env, 4, 3 + n) == id
  end
  return string.byte(env, 3) == 0xd9 and string.byte(env, 4) == n and
         string.sub(env, 5, 4 + n) == id
end

-- The worker that holds job id (taken, not yet settled) and its envelope there, if any.
local function holder(base, workers, id)
  for _, name in ipairs(redis.call('HKEYS', workers)) do
    for _, env in ipairs(redis.call('LRANGE', base .. ':inflight:' .. name, 0, -1)) do
      if is_job(env, id) then return name, env end
    end
  end
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
  local nxt = redis.call('ZRANGEBYSCORE', delayed, 0, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return nxt[2] or ''
end

-- How many jobs the topic's flow control lets a worker start now, and, when none, how long
-- until it may try again; judged on Redis' clock, fleet-wide (every worker of every host
-- shares these keys). rate_limit is an exact sliding window kept per take, not per job:
-- `starts` holds one entry per take ("count:taker", scored by its time) and `starts:n`
-- their sum, so a take costs the same few commands however many jobs it takes.
local CONCURRENCY_POLL_S = 0.25  -- a full topic frees a slot when some job ends: look again
local function allowance(k, rules, n)
  local wait = nil
  if rules.rate_n > 0 then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
    local cutoff = now - rules.rate_period
    local old = redis.call('ZRANGEBYSCORE', k.starts, '-inf', cutoff)
    local total
    if #old > 0 then
      local gone = 0
      for i = 1, #old do gone = gone + (tonumber(string.match(old[i], '^(%d+):')) or 1) end
      redis.call('ZREMRANGEBYSCORE', k.starts, '-inf', cutoff)
      total = redis.call('DECRBY', k.starts .. ':n', gone)
    else
      total = tonumber(redis.call('GET', k.starts .. ':n') or '0')
    end
    local free = rules.rate_n - total
    if free <= 0 then
      local oldest = redis.call('ZRANGE', k.starts, 0, 0, 'WITHSCORES')
      wait = math.max(0.001, (tonumber(oldest[2]) or now) + rules.rate_period - now)
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
    local ttl = math.ceil(rules.rate_period) + 1
    redis.call('ZADD', k.starts, rules.clock, #jobs .. ':' .. rules.taker)
    redis.call('EXPIRE', k.starts, ttl)
    redis.call('INCRBY', k.starts .. ':n', #jobs)
    redis.call('EXPIRE', k.starts .. ':n', ttl)
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

-- Tracked topics, while cancels are pending: a job cancelled before it ran (or asked to
-- stop while it ran, then requeued) is dropped here and never runs. Returns the jobs that
-- may run.
local function admit(k, rules, jobs)
  if not rules.track or not cancels_pending(k.base) then return jobs end
  local out = {}
  for i = 1, #jobs do
    local id, _, headers = head(jobs[i])
    if id and redis.call('HDEL', k.base .. ':cancelling', id) == 1 then
      release_unique(k.base, headers, id)
      cancel_seen(k.base)
      local rec = redis.call('HGET', k.base .. ':jobs', id)
      if rec and not FINISHED[record_state(rec)] then
        move_on(k.base, id, 'cancelled', rules.now, rules.ttl, {})
      end
    else
      out[#out + 1] = jobs[i]
    end
  end
  return out
end

-- Take up to n jobs onto the worker's in-flight list: priority jobs first (best first),
-- then ready (FIFO); due delayed jobs are promoted on the way. Returns the jobs taken
-- (oldest first) and, when flow control held them back, the seconds until the next try.
local function take(k, inflight, n, promote_limit, rules)
  local plain = rules.rate_n == 0 and rules.concurrency == 0 and not rules.track
  local wait
  if not plain then n, wait = allowance(k, rules, n) end
  -- one look at delayed, which most often finds nothing due: then no more is done
  local items
  if #redis.call('ZRANGEBYSCORE', k.delayed, '-inf', rules.now_s, 'LIMIT', 0, 1) > 0 then
    if n > 0 then  -- priority jobs (negative scores), best first, are taken as they are
      items = redis.call('ZRANGEBYSCORE', k.delayed, '-inf', '(0', 'LIMIT', 0, n)
      if #items > 0 then redis.call('ZREM', k.delayed, unpack(items)) end
    end
    promote_due(k.ready, k.delayed, rules.now, promote_limit)
  end
  if n <= 0 then return {}, wait end
  if not items or #items == 0 then
    items = redis.call('RPOP', k.ready, n == rules.take and rules.take_s or n)
    if not items then return {}, wait end
  elseif #items < n then
    local low = redis.call('RPOP', k.ready, n - #items)
    if low then
      for i = 1, #low do items[#items + 1] = low[i] end
    end
  end
  if not plain then items = admit(k, rules, items) end
  if #items > 0 then
    if not plain then started(k, rules, items) end
    redis.call('LPUSH', inflight, unpack(items))
  end
  return items, wait
end
