-- requeue_dead: move one dead-lettered job back to ready, at most once. The exact entry is
-- removed from dead and its replacement (attempts reset, history noted) pushed to ready in
-- one step, so two concurrent retries of the same job cannot both requeue it. A tracked
-- job's record goes back to queued.
-- KEYS[1] dead      LIST  dead-lettered envelopes, newest on the left
-- KEYS[2] ready     LIST  producers LPUSH, workers take from the right (FIFO)
-- KEYS[3] conf      HASH  the topic's settings the masters publish (track)
-- ARGV[1] the dead entry, byte for byte as read from KEYS[1]
-- ARGV[2] the envelope to push to ready   ARGV[3] now (epoch s)
-- returns 1 if requeued, 0 if the entry was no longer in dead
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[2])
if redis.call('HGET', KEYS[3], 'track') == '1' then
  local id = head(ARGV[2])
  if id then  -- its finished record is history: the job waits again
    local base = string.sub(KEYS[2], 1, -7)
    local now = tonumber(ARGV[3])
    local rec = redis.call('HGET', base .. ':jobs', id)
    local enqueued_at = rec and record_fields(rec).enqueued_at or now
    set_record(base, id, 'queued', {attempts = 0, enqueued_at = enqueued_at}, now, 0)
  end
end
return 1
