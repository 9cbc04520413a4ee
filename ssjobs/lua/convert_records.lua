-- convert_records: one tracked job's record of the first layout (a hash per job,
-- P:{T}:job:ID) into the topic's records hash (lib.lua), unless a newer record is there
-- already; the old key is deleted. Safe to run twice.
-- KEYS[1] old record  HASH
-- KEYS[2] jobs        HASH  job id -> record
-- ARGV[1] job id   ARGV[2] the record   ARGV[3] its expires_at ('0': not finished)
-- ARGV[4] '1' when a cancel is still to be seen through (a running job asked to stop, or a
--         queued one the take step has not dropped yet): it goes into the cancelling hash,
--         which the cancel count P:{T}:cancels already counts
-- returns 1 when converted, 0 when the old key was gone
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local base = string.sub(KEYS[2], 1, -6)
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 1 and ARGV[3] ~= '0' then
  expire_later(base, ARGV[3], ARGV[1])
end
if ARGV[4] == '1' then redis.call('HSETNX', base .. ':cancelling', ARGV[1], 1) end
redis.call('DEL', KEYS[1])
return 1
