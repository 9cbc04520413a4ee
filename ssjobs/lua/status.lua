-- status: a tracked job's record as it stands, and whether a worker holds the job now (then
-- it runs, or is next in its worker's batch).
-- KEYS[1] workers   HASH  worker name -> batch it holds
-- (and, in the topic's slot, the records (lib.lua), in-flight lists, progress and cancelling)
-- ARGV[1] job id
-- returns {} for an unknown job, {record} for a finished one, else {record, held (1 or 0),
-- attempts, taken at ('' unknown), progress ('' none), cancel asked (1 or 0)}
local base = string.sub(KEYS[1], 1, -9)
local id = ARGV[1]
local rec = redis.call('HGET', base .. ':jobs', id)
if not rec then return {} end
if FINISHED[record_state(rec)] then return {rec} end
local cancel = redis.call('HEXISTS', base .. ':cancelling', id)
local progress = redis.call('HGET', base .. ':progress', id) or ''
local name, env = holder(base, KEYS[1], id)
if not name then return {rec, 0, 0, '', progress, cancel} end
local _, attempts = head(env)
return {rec, 1, attempts or 0, redis.call('HGET', base .. ':taken', name) or '', progress, cancel}
