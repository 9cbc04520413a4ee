-- recover: requeue what a worker that is gone held, and delete its registration (which
-- fences it, should it be alive after all: its next settle is refused). Safe to run twice.
-- With the worker's position in its batch (its master reads it from the scoreboard), the
-- oldest `done` entries succeeded (dropped, counted processed), the next `running` ones ran
-- (each charged one attempt; past its max_retries dead-lettered as a poison job, reason
-- "crashed"), and the rest go back to the front of ready in order, uncharged. Without it
-- (a dead host), everything goes back uncharged. See docs/design.md, "Crashes".
-- KEYS[1] ready     LIST
-- KEYS[2] inflight  LIST  the worker's batch, oldest on the right
-- KEYS[3] dead      LIST
-- KEYS[4] stats     HASH
-- KEYS[5] workers   HASH  worker name -> number of the batch it holds
-- KEYS[6] running   STRING jobs held by workers (concurrency)
-- ARGV[1] worker name
-- ARGV[2] seq       the batch the worker's slot names, '' when unknown
-- ARGV[3] done      ARGV[4] running (how many entries after the done ones to charge)
-- ARGV[5] max_retries   ARGV[6] dead cap   ARGV[7] now   ARGV[8] error message
-- ARGV[9] concurrency limited: '1' or '0'   ARGV[10] tracked: '1' or '0'   ARGV[11] result_ttl
-- returns {requeued, dead-lettered, dropped as done}
local name = ARGV[1]
local done, running = tonumber(ARGV[3]) or 0, tonumber(ARGV[4]) or 0
local max_retries = tonumber(ARGV[5])
local tracked, ttl = ARGV[10] == '1', tonumber(ARGV[11])
local base = string.sub(KEYS[1], 1, -7)
local stored = redis.call('HGET', KEYS[5], name)
if ARGV[2] == '' then
  done, running = 0, 0
elseif stored and tonumber(stored) ~= tonumber(ARGV[2]) then
  -- its last settle ran (or the slot is stale): the list holds a batch it never began
  done, running = 0, 0
end
-- (no registration: the worker was fenced, and what its list holds it took after the fence,
-- which is what its slot describes)

local function charge(env)
  local o1 = cmsgpack.unpack_limit(env, 3, 1)
  local o2, attempts = cmsgpack.unpack_limit(env, 1, o1)
  if type(attempts) ~= 'number' then error('attempts') end
  local o3 = cmsgpack.unpack_limit(env, 1, o2)
  local o4, headers = cmsgpack.unpack_limit(env, 1, o3)
  local limit = tonumber(headers['max_retries']) or max_retries
  attempts = attempts + 1
  local head_part = string.sub(env, 1, o1) .. cmsgpack.pack(attempts)
  if attempts <= limit then
    return head_part .. string.sub(env, o2 + 1), false, attempts
  end
  headers['error'] = {reason = 'crashed', type = 'WorkerCrashed', message = ARGV[8],
                      traceback = '', failed_at = tonumber(ARGV[7]), worker = name}
  return head_part .. string.sub(env, o2 + 1, o3) .. cmsgpack.pack(headers) ..
         string.sub(env, o4 + 1), true, attempts
end

local crash = {type = 'WorkerCrashed', message = ARGV[8]}
local now = tonumber(ARGV[7])
local items = redis.call('LRANGE', KEYS[2], 0, -1)  -- newest first: items[#items] is oldest
local n = #items
local dropped = math.min(done, n)
local requeued, dead = 0, 0
if dropped > 0 then redis.call('HINCRBY', KEYS[4], 'processed', dropped) end
for i = n - dropped + 1, n do  -- they succeeded: their unique keys and records say so
  local id, _, headers = head(items[i])
  if id then
    release_unique(base, headers, id)
    if tracked then
      move_on(base, id, 'succeeded', now, ttl,
              {result_error = 'the result was lost: its worker died before saving it'})
    end
  end
end
local first_running = n - dropped  -- items are newest first: these ran, oldest first
local last_running = first_running - running + 1
for i = 1, n - dropped do  -- newest first: RPUSH leaves the oldest rightmost, next to run
  local env, is_dead = items[i], false
  if i >= last_running and i <= first_running then
    redis.call('HINCRBY', KEYS[4], 'failed', 1)
    if string.byte(env, 1) == 0x97 then
      local ok, new_env, poisoned, attempts = pcall(charge, env)
      if ok then
        env, is_dead = new_env, poisoned
        local id, _, headers = head(env)
        if id and poisoned then release_unique(base, headers, id) end
        if id and tracked then
          move_on(base, id, poisoned and 'dead' or 'retrying', now, ttl,
                  {attempts = attempts, error = crash})
        end
      end
    end
    if not is_dead then redis.call('HINCRBY', KEYS[4], 'retried', 1) end
  end
  if is_dead then
    redis.call('LPUSH', KEYS[3], env)
    redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[6]) - 1)
    redis.call('HINCRBY', KEYS[4], 'dead', 1)
    dead = dead + 1
  else
    redis.call('RPUSH', KEYS[1], env)
    requeued = requeued + 1
  end
end
if ARGV[9] == '1' and n > 0 then  -- what it held no longer runs
  local left = redis.call('DECRBY', KEYS[6], n)
  if left < 0 then redis.call('SET', KEYS[6], 0) end
end
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[5], name)
redis.call('HDEL', base .. ':taken', name)  -- (a topic may have stopped tracking)
return {requeued, dead, dropped}
