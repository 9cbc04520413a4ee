-- handover: a worker of a tracked topic got a job from the idle wait (BLMOVE), not from the
-- take step: it notes when it took it (what status gives as started_at) and learns whether
-- the job was cancelled before it ran (then it drops the job, as the take step would have).
-- KEYS[1] taken       HASH  worker name -> when it took its batch
-- KEYS[2] cancelling  HASH  job id -> 1 for a cancel not yet seen through
-- ARGV[1] worker name   ARGV[2] now (epoch s)   ARGV[3] job id
-- returns 1 when the job was cancelled, else 0
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HEXISTS', KEYS[2], ARGV[3])
