-- push: enqueue envelopes once, even when the command is sent again after a lost reply.
-- The producer sends a push token (one per connection or concurrent call) and a marker id
-- (the job id; for a chunk of push_many, its first job's id); the token's marker key holds
-- the last id pushed under it, so a repeat finds its own id there and enqueues nothing.
-- KEYS[1] ready (LIST) or, for a delayed push, delayed (ZSET)
-- KEYS[2] marker    STRING  the token's last marker id
-- ARGV[1] marker id   ARGV[2] marker lifetime (s)   ARGV[3] due time, '' for ready
-- ARGV[4..] envelopes (oldest first)
-- returns 1 when enqueued, 0 when this marker id was already pushed under this token
if redis.call('GET', KEYS[2]) == ARGV[1] then
  return 0
end
if ARGV[3] == '' then
  redis.call('LPUSH', KEYS[1], unpack(ARGV, 4))
else
  local args = {}
  for i = 4, #ARGV do
    args[#args + 1] = ARGV[3]
    args[#args + 1] = ARGV[i]
  end
  redis.call('ZADD', KEYS[1], unpack(args))
end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 1
