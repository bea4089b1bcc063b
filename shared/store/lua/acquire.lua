-- Take a session's lease. The fencing token is the meta's `attempt`: taking the lease
-- increments it, and the append refuses a token that is not the current one. The lease
-- key itself says that the holder is alive; the reaper hands sessions whose lease key
-- expired to another worker.
-- KEYS: meta, lease
-- ARGV: ttl_ms, worker
-- Returns {'ok', token}, or {'not_found'}, {'terminal'}, {'held'}.
local TERMINAL = {completed = true, failed = true, cancelled = true}
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'not_found'} end
if TERMINAL[status] then return {'terminal'} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'held'} end
local token = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'worker', ARGV[2])
redis.call('SET', KEYS[2], token, 'PX', ARGV[1])
return {'ok', tostring(token)}
