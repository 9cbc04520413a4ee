-- requeue_dead: move one dead-lettered job back to ready, at most once. The exact entry is
-- removed from dead and its replacement (attempts reset, history noted) pushed to ready in
-- one step, so two concurrent retries of the same job cannot both requeue it. A tracked
-- job's record goes back to queued.
-- KEYS[1] dead      LIST  dead-lettered envelopes, newest on the left
-- KEYS[2] ready     LIST  producers LPUSH, workers take from the right (FIFO)
-- KEYS[3] conf      HASH  the topic's settings the masters publish (track)
-- ARGV[1] the dead entry, byte for byte as read from KEYS[1]
-- ARGV[2] the envelope to push to ready
-- returns 1 if requeued, 0 if the entry was no longer in dead
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[2])
if redis.call('HGET', KEYS[3], 'track') == '1' then
  local id = head(ARGV[2])
  if id then
    local key = record_key(string.sub(KEYS[2], 1, -7), id)
    redis.call('PERSIST', key)
    redis.call('HSET', key, 'state', 'queued', 'attempts', 0)
    redis.call('HDEL', key, 'finished_at', 'result', 'result_error', 'cancel')
  end
end
return 1
