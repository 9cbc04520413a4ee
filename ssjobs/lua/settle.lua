-- settle: finish what a worker has done of the batch it holds, and take the next jobs, in
-- one round trip. A fetch is the settle of an empty batch. Safe to send twice: the worker
-- names the batch by its sequence number, and a repeat of an applied settle changes nothing
-- and returns the same jobs again (docs/design.md, "Lost replies").
-- KEYS[1] ready     LIST  producers LPUSH, workers take from the right (FIFO)
-- KEYS[2] delayed   ZSET  envelope -> due time (epoch seconds); priority jobs: negative
-- KEYS[3] inflight  LIST  this worker's batch, oldest on the right
-- KEYS[4] dead      LIST  dead-lettered envelopes (error in headers.error), newest left
-- KEYS[5] stats     HASH  processed, failed, retried, dead, throttled_until
-- KEYS[6] workers   HASH  worker name -> number of the batch it holds (its registration)
-- (and, in the topic's slot, P:{T}:starts and P:{T}:running for flow control, the job
-- records P:{T}:job:ID of a tracked topic, unique keys and the cancel count)
-- ARGV[1] worker name
-- ARGV[2] seq       the number of the batch being settled
-- ARGV[3] done      its oldest entries the worker finished: they are dropped (the failures
--                   among them come back below as retries or dead letters)
-- ARGV[4] held      entries after those that the worker has not run
-- ARGV[5] give_back 1: the held entries go back to the front of ready (the worker stops);
--                   0: the worker keeps them and runs them next
-- ARGV[6] processed ARGV[7] failed   counter increments
-- ARGV[8] n_retry   ARGV[9] n_dead
-- ARGV[10] take     jobs to take next (0: none)
-- ARGV[11] now (epoch s)   ARGV[12] promote limit   ARGV[13] dead cap (max length of dead)
-- ARGV[14] rules: '' for a topic with no flow control and no tracking, else five words:
--          rate limit jobs (0: none), per seconds, concurrency (0: none), tracked ('1' or
--          '0'), result_ttl (s)
-- ARGV[15] n_record (tracked jobs finished)   ARGV[16] n_release (unique keys to release)
-- then n_retry pairs (due time, envelope), n_dead envelopes, n_record groups (id, state,
-- attempts, result ('' none), error ('' none), result_error ('' none)), n_release pairs
-- (unique key, job id)
-- returns {jobs, next_due, wait}: the jobs the worker did not know of yet (what a lost
-- BLMOVE moved, then the ones just taken), oldest first; next_due is '' unless there are
-- none, then the due time of the next delayed job ('' if none); wait is '' unless flow
-- control held jobs back, then the seconds until the next try.
-- error 'FENCED ...' when the worker is not registered (it was recovered) or names a batch
-- that is neither the current one nor the one just settled.
local name, seq = ARGV[1], tonumber(ARGV[2])
local done, held = tonumber(ARGV[3]), tonumber(ARGV[4])
local give_back = ARGV[5] == '1'
local keep = held
if give_back then keep = 0 end
local base = string.sub(KEYS[1], 1, -7)
local k = {ready = KEYS[1], delayed = KEYS[2], stats = KEYS[5], base = base}
local rules = {now = tonumber(ARGV[11]), now_s = ARGV[11], take = tonumber(ARGV[10]),
               taker = name .. ':' .. ARGV[2],
               take_s = ARGV[10], rate_n = 0, rate_period = 1, concurrency = 0,
               track = false, ttl = 86400}
if ARGV[14] ~= '' then
  local w = {}
  for word in string.gmatch(ARGV[14], '%S+') do w[#w + 1] = word end
  rules.rate_n, rules.rate_period = tonumber(w[1]), tonumber(w[2])
  rules.concurrency, rules.track, rules.ttl = tonumber(w[3]), w[4] == '1', tonumber(w[5])
  k.starts, k.running = base .. ':starts', base .. ':running'
end

local function reply(jobs, wait)
  if #jobs > 0 then return {jobs, '', ''} end
  return {jobs, next_due(KEYS[2]), wait and tostring(wait) or ''}
end

local stored = redis.call('HGET', KEYS[6], name)
if not stored then
  return redis.error_reply('FENCED worker ' .. name .. ' is not registered')
end
stored = tonumber(stored)
if stored == seq + 1 then  -- a repeat: the first call ran and its reply was lost
  return reply(unheld(KEYS[3], keep))
end
if stored ~= seq then
  return redis.error_reply('FENCED worker ' .. name .. ' settles batch ' .. seq ..
                           ', holds ' .. stored)
end

-- Validate before writing anything: a script that fails halfway keeps its first writes.
local n_retry, n_dead = tonumber(ARGV[8]), tonumber(ARGV[9])
local n_record, n_release = tonumber(ARGV[15]), tonumber(ARGV[16])
local first = 17
for j = 0, n_retry - 1 do
  local due = tonumber(ARGV[first + 2 * j])
  if not due or due ~= due or due == math.huge or due == -math.huge then
    return redis.error_reply('ERR settle: retry due time is not a finite number')
  end
end
local len = redis.call('LLEN', KEYS[3])
local extra = len - done - held
if extra < 0 then
  return redis.error_reply('FENCED worker ' .. name .. ' holds ' .. len ..
                           ' jobs, settles ' .. (done + held))
end

if done > 0 then
  if done == len then redis.call('DEL', KEYS[3]) else redis.call('LTRIM', KEYS[3], 0, -done - 1) end
end
local ended = done  -- jobs that no longer hold a concurrency slot
if give_back and held > 0 then
  local back = redis.call('RPOP', KEYS[3], held)  -- oldest first
  local newest_first = {}
  for j = #back, 1, -1 do newest_first[#newest_first + 1] = back[j] end
  redis.call('RPUSH', KEYS[1], unpack(newest_first))  -- the oldest ends up next in line
  ended = ended + held
  if rules.track then  -- taken, not begun: queued again
    for j = 1, #back do
      local id = head(back[j])
      if id then track(k.base, id, nil, 'state', 'queued') end
    end
  end
end
if rules.concurrency > 0 and ended > 0 then
  local left = redis.call('DECRBY', k.running, ended)
  if left < 0 then redis.call('SET', k.running, 0) end
end
local i = first
for _ = 1, n_retry do
  redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for _ = 1, n_dead do
  redis.call('LPUSH', KEYS[4], ARGV[i])
  i = i + 1
end
if n_dead > 0 then redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[13]) - 1) end
local ttl = rules.ttl
local check = n_record > 0 and cancels_pending(k.base)
for _ = 1, n_record do
  local id, state = ARGV[i], ARGV[i + 1]
  -- a job cancelled while it ran ends cancelled, however it ended; a retry of it stays
  -- counted as a pending cancel until the take step drops it
  if check and redis.call('HGET', record_key(k.base, id), 'cancel') == '1' then
    if state ~= 'retrying' then cancel_seen(k.base) end
    state = 'cancelled'
  end
  -- a success clears the error of an earlier attempt ('' reads as none)
  local fields = {'state', state, 'attempts', ARGV[i + 2], 'error', ARGV[i + 4]}
  if ARGV[i + 3] ~= '' then fields[#fields + 1] = 'result'; fields[#fields + 1] = ARGV[i + 3] end
  if ARGV[i + 5] ~= '' then
    fields[#fields + 1] = 'result_error'; fields[#fields + 1] = ARGV[i + 5]
  end
  local finished = state ~= 'retrying'
  if finished then
    fields[#fields + 1] = 'finished_at'; fields[#fields + 1] = ARGV[11]
  end
  track(k.base, id, finished and ttl or nil, unpack(fields))
  i = i + 6
end
for _ = 1, n_release do
  local key = k.base .. ':unique:' .. ARGV[i]
  if redis.call('GET', key) == ARGV[i + 1] then redis.call('DEL', key) end
  i = i + 2
end
if ARGV[6] ~= '0' then redis.call('HINCRBY', KEYS[5], 'processed', ARGV[6]) end
if ARGV[7] ~= '0' then redis.call('HINCRBY', KEYS[5], 'failed', ARGV[7]) end
if n_retry > 0 then redis.call('HINCRBY', KEYS[5], 'retried', n_retry) end
if n_dead > 0 then redis.call('HINCRBY', KEYS[5], 'dead', n_dead) end

local taken, wait = {}, nil
if ARGV[10] ~= '0' then
  taken, wait = take(k, KEYS[3], rules.take, ARGV[12], rules)
end
redis.call('HSET', KEYS[6], name, seq + 1)
local jobs = taken
if extra > 0 then jobs = unheld(KEYS[3], keep) end
return reply(jobs, wait)
