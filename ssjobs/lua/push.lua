-- push: enqueue envelopes once, even when the command is sent again after a lost reply.
-- The producer sends a push token (one per connection or concurrent call) and a marker id
-- (the job id; for a chunk of push_many, its first job's id); the token's marker key holds
-- the last id pushed under it, so a repeat finds its own id there and enqueues nothing.
-- KEYS[1] ready     LIST
-- KEYS[2] delayed   ZSET  envelope -> due time; a priority job: a negative score (lib.lua)
-- KEYS[3] marker    STRING  the token's last marker id
-- KEYS[4] conf      HASH  the topic's settings the masters publish (track, result_ttl)
-- KEYS[5] unique    STRING  the unique key's holder (the job id); unused when unique_for is 0
-- ARGV[1] marker id   ARGV[2] due time, '' for now   ARGV[3] priority (0..9)
-- ARGV[4] unique_for (s; 0: no unique key)   ARGV[5] now (epoch s)   ARGV[6..] envelopes
-- (oldest first)
-- returns {1, ''} when enqueued, {0, ''} when this marker id was already pushed under this
-- token, {2, id} when the unique key is held: nothing enqueued, id is the job holding it
local MARKER_TTL_S = 3600  -- outlives any retry of the token's last push by far
-- one command checks and sets the marker: a single push pays for every command it makes
local before = redis.call('SET', KEYS[3], ARGV[1], 'EX', MARKER_TTL_S, 'GET')
if before == ARGV[1] then
  return {0, ''}
end
if ARGV[4] ~= '0' then
  local holder = redis.call('GET', KEYS[5])
  if holder then  -- nothing is pushed: a repeat of this push must look at the key again
    if before then redis.call('SET', KEYS[3], before, 'KEEPTTL') else redis.call('DEL', KEYS[3]) end
    return {2, holder}
  end
  redis.call('SET', KEYS[5], ARGV[1], 'EX', ARGV[4])
end
local now, priority = tonumber(ARGV[5]), tonumber(ARGV[3])
local base = string.sub(KEYS[1], 1, -7)
local first = 6
if ARGV[2] ~= '' then
  local args = {}
  for i = first, #ARGV do
    args[#args + 1] = ARGV[2]
    args[#args + 1] = ARGV[i]
  end
  redis.call('ZADD', KEYS[2], unpack(args))
elseif priority > 0 then
  local args = {}
  for i = first, #ARGV do  -- one score: Redis orders equal scores by the envelope bytes,
    args[#args + 1] = prio_score(priority, now)   -- whose ids sort by push time
    args[#args + 1] = ARGV[i]
  end
  redis.call('ZADD', KEYS[2], unpack(args))
  -- workers waiting for jobs block on ready: a token there wakes one (it takes the
  -- priority jobs first, and drops the token)
  if redis.call('LLEN', KEYS[1]) == 0 then redis.call('LPUSH', KEYS[1], NUDGE) end
else
  redis.call('LPUSH', KEYS[1], unpack(ARGV, first))
end
if redis.call('HGET', KEYS[4], 'track') == '1' then
  local state = ARGV[2] ~= '' and 'delayed' or 'queued'
  local fields = {attempts = 0, enqueued_at = now}
  if ARGV[4] ~= '0' then fields.unique = KEYS[5] end  -- cancel gives the key back
  -- new_record's form, built once for every job of the push (naming new_record here would
  -- define it, and what it uses, on every push of every topic)
  local rec = state .. ' 0 ' .. cmsgpack.pack(fields)
  local records = {}
  for i = first, #ARGV do
    local id = head(ARGV[i])
    if id then
      records[#records + 1] = id
      records[#records + 1] = rec
    end
  end
  if #records > 0 then redis.call('HSET', base .. ':jobs', unpack(records)) end
end
return {1, ''}
