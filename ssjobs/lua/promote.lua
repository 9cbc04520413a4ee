-- promote: move due delayed jobs to where they wait: the back of ready, or, for a job with
-- a priority, its priority's place among the due-before-all jobs of delayed (lib.lua's
-- promote_due).
-- KEYS[1] ready     LIST
-- KEYS[2] delayed   ZSET  envelope -> due time (epoch seconds); priority jobs: negative
-- ARGV[1] now (epoch seconds)
-- ARGV[2] max jobs to promote in this call
-- returns the number promoted
return promote_due(KEYS[1], KEYS[2], tonumber(ARGV[1]), ARGV[2])
