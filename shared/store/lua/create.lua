-- Store a new session: its meta hash and its first event (`queued`), unless it exists.
-- KEYS: meta, events
-- ARGV: the first event's data (JSON), then the meta's [field, value]...
-- Returns the event's id, or false if the session exists already.
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
local id = redis.call('XADD', KEYS[2], '*', 't', 'status', 'd', ARGV[1])
redis.call('HSET', KEYS[1], 'last_id', id)
return id
