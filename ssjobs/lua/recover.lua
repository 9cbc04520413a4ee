-- recover: requeue the in-flight jobs of a worker that died, to the front of ready.
-- The job it was running (if known) is charged one attempt; past max_retries it is
-- dead-lettered as a poison job instead (reason "crashed").
-- KEYS[1] ready     LIST
-- KEYS[2] inflight  LIST  the dead worker's in-flight jobs, newest on the left
-- KEYS[3] dead      LIST
-- KEYS[4] stats     HASH
-- ARGV[1] id of the job the worker was running, or '' if none/unknown
-- ARGV[2] max_retries   ARGV[3] dead cap   ARGV[4] now   ARGV[5] worker name
-- ARGV[6] error message for the charged job
-- returns {requeued, dead-lettered}
local charged, max_retries = ARGV[1], tonumber(ARGV[2])
local items = redis.call('LRANGE', KEYS[2], 0, -1)
local requeued, dead = 0, 0

-- Envelope layout: 0x97, version, id, topic, attempts, enqueued_at, headers, payload.
local function charge(env)
  local o1, _, id = cmsgpack.unpack_limit(env, 3, 1)
  if id ~= charged then return env, false end
  local o2, attempts = cmsgpack.unpack_limit(env, 1, o1)
  attempts = attempts + 1
  local head = string.sub(env, 1, o1) .. cmsgpack.pack(attempts)
  if attempts <= max_retries then
    return head .. string.sub(env, o2 + 1), false
  end
  local o3 = cmsgpack.unpack_limit(env, 1, o2)
  local o4, headers = cmsgpack.unpack_limit(env, 1, o3)
  headers['error'] = {reason = 'crashed', type = 'WorkerCrashed', message = ARGV[6],
                      traceback = '', failed_at = tonumber(ARGV[4]), worker = ARGV[5]}
  return head .. string.sub(env, o2 + 1, o3) .. cmsgpack.pack(headers) ..
         string.sub(env, o4 + 1), true
end

for i = 1, #items do  -- newest first: RPUSH leaves the oldest rightmost, next to run
  local env, is_dead = items[i], false
  if charged ~= '' and string.byte(env, 1) == 0x97 then
    local ok, new_env, poisoned = pcall(charge, env)
    if ok then env, is_dead = new_env, poisoned end
    if ok and new_env ~= items[i] then
      redis.call('HINCRBY', KEYS[4], 'failed', 1)
      if not poisoned then redis.call('HINCRBY', KEYS[4], 'retried', 1) end
    end
  end
  if is_dead then
    redis.call('LPUSH', KEYS[3], env)
    redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
    redis.call('HINCRBY', KEYS[4], 'dead', 1)
    dead = dead + 1
  else
    redis.call('RPUSH', KEYS[1], env)
    requeued = requeued + 1
  end
end
redis.call('DEL', KEYS[2])
return {requeued, dead}
