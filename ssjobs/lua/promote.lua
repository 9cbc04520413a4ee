-- promote: move due delayed jobs to where they wait: the back of ready, or the priority
-- ZSET for a job with a priority (lib.lua's promote_due).
-- KEYS[1] ready     LIST
-- KEYS[2] delayed   ZSET  envelope -> due time (epoch seconds)
-- KEYS[3] prio      ZSET  priority jobs
-- ARGV[1] now (epoch seconds)
-- ARGV[2] max jobs to promote in this call
-- returns the number promoted
return promote_due(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), ARGV[2])
