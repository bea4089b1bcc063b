-- Extend a held lease. Renewing also re-creates a lease key that expired while Redis was
-- unreachable, as long as nobody took the session over meanwhile (the token is still the
-- current attempt).
-- KEYS: meta, lease
-- ARGV: token, ttl_ms
-- Returns 1 if extended, 0 if the lease was lost (taken over), -1 if the session ended
-- (cancelled, or gone).
local TERMINAL = {completed = true, failed = true, cancelled = true}
local status = redis.call('HGET', KEYS[1], 'status')
if not status or TERMINAL[status] then return -1 end
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
