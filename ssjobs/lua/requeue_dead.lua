-- requeue_dead: move one dead-lettered job back to ready, at most once. The exact entry is
-- removed from dead and its replacement (attempts reset, history noted) pushed to ready in
-- one step, so two concurrent retries of the same job cannot both requeue it.
-- KEYS[1] dead      LIST  dead-lettered envelopes, newest on the left
-- KEYS[2] ready     LIST  producers LPUSH, workers take from the right (FIFO)
-- ARGV[1] the dead entry, byte for byte as read from KEYS[1]
-- ARGV[2] the envelope to push to ready
-- returns 1 if requeued, 0 if the entry was no longer in dead
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
