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
-- records of a tracked topic (lib.lua), unique keys and the cancel count)
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
-- ARGV[15] records of tracked jobs that ended or wait for a retry: a msgpack array (job id,
--          record, job id, record ...), '' for none (one argument: cheaper on both sides
--          than two per job)
-- ARGV[16] the expiry entry of those that ended ('<expires_at> <msgpack array of their ids>'),
--          '' for none
-- ARGV[17] n_release (unique keys to release)
-- then n_retry pairs (due time, envelope), n_dead envelopes and n_release pairs (unique
-- key, job id)
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

-- The records of the tracked jobs settled now (job id, record, ...: those that ended and
-- those waiting for a retry) and the expiry entry of those that ended, each written with
-- one command. While cancels are pending, a job asked to stop while it ran ends cancelled,
-- however it ended (a retry of it stays counted as a pending cancel until the take step
-- drops it).
local function store_records(base, records, expiry, rules)
  if cancels_pending(base) then
    local cancelling = base .. ':cancelling'
    for j = 1, #records, 2 do
      local id = records[j]
      if redis.call('HEXISTS', cancelling, id) == 1 then
        if record_state(records[j + 1]) == 'retrying' then  -- no binary values: re-encoded
          records[j + 1] = new_record(base, id, 'cancelled', record_fields(records[j + 1]),
                                      rules.now, rules.ttl)
        else
          redis.call('HDEL', cancelling, id)
          cancel_seen(base)
          records[j + 1] = (string.gsub(records[j + 1], '^[^ ]*', 'cancelled', 1))
        end
      end
    end
  end
  redis.call('HSET', base .. ':jobs', unpack(records))
  if expiry ~= '' then redis.call('RPUSH', base .. ':expiry', expiry) end
  -- (deleted as the list is, records and all: a record is never a field name there, as it
  -- holds spaces and ids do not; one command, no loop)
  if redis.call('EXISTS', base .. ':progress') == 1 then
    redis.call('HDEL', base .. ':progress', unpack(records))
  end
end

local n_retry, n_dead = tonumber(ARGV[8]), tonumber(ARGV[9])
local n_release = tonumber(ARGV[17])
local first = 18
local records = {}
if ARGV[15] ~= '' then
  local ok, list = pcall(cmsgpack.unpack, ARGV[15])
  if not ok or type(list) ~= 'table' or #list % 2 ~= 0 then
    return redis.error_reply('ERR settle: records are not a msgpack array of pairs')
  end
  records = list
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
for j = 0, n_retry - 1 do
  local due = tonumber(ARGV[first + 2 * j])
  if not due or due ~= due or due == math.huge or due == -math.huge then
    return redis.error_reply('ERR settle: retry due time is not a finite number')
  end
end
local len = redis.call('LLEN', KEYS[3])
local extra = len - done - held
if extra < 0 then
  return redis.error_reply('FENCED worker ' .. name .. ' holds ' .. len .. ' jobs, settles ' ..
                           (done + held))
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
if #records > 0 then store_records(k.base, records, ARGV[16], rules) end
-- a settle adds one expiry entry at most; a topic that stopped tracking still trims (one
-- LINDEX when there is nothing to do)
trim_expired(k.base, rules.now, 2)
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
if rules.track then
  -- when the worker took what it holds: a held job's started_at in status. A worker that
  -- holds nothing has no take time, so a job the idle wait hands it reads as queued until
  -- the worker notes the handover (handover.lua), never with this batch's time.
  if #taken > 0 or extra > 0 then
    redis.call('HSET', base .. ':taken', name, ARGV[11])
  elseif keep == 0 then
    redis.call('HDEL', base .. ':taken', name)
  end
end
redis.call('HSET', KEYS[6], name, seq + 1)
local jobs = taken
if extra > 0 then jobs = unheld(KEYS[3], keep) end
return reply(jobs, wait)
