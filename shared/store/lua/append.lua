-- The one write path of a session's events (docs/ARCHITECTURE.md, "The write path").
-- KEYS: meta, events, lease, and in a Redis Cluster the session's notify channel
-- ARGV: token, type, text, index, data, now_ms, maxlen, ttl_s, new_status, [field, value]...
-- Returns the new entry's id, or '!' and why it was refused.
--
-- With a fourth key it also SPUBLISHes the new entry's id there (an empty message when
-- the stream ended full): in a cluster one XREAD cannot follow the sessions of many
-- slots, so the API's followers learn of new entries this way. The channel shares the
-- session's hash tag, so the same slot (Redis 7+).
local TERMINAL = {completed = true, failed = true, cancelled = true}
-- The parts of the answer, counted together by one index (`chunks` in the meta).
local CONTENT = {chunk = true, reasoning = true, tool_call = true}

local function append()
  local status = redis.call('HGET', KEYS[1], 'status')
  if not status then return '!not_found' end
  if TERMINAL[status] then return '!terminal' end
  if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then
    return '!lease_lost'
  end
  local now = ARGV[6]
  local function finish()
    redis.call('EXPIRE', KEYS[1], ARGV[8])
    redis.call('EXPIRE', KEYS[2], ARGV[8])
    redis.call('DEL', KEYS[3])
  end
  if CONTENT[ARGV[2]] then
    local chunks = tonumber(redis.call('HGET', KEYS[1], 'chunks') or '0')
    local index = tonumber(ARGV[4])
    if index < chunks then return '!duplicate' end
    if index > chunks then return '!gap' end
    if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[7]) - 1 then
      local err = cjson.encode({code = 'stream_too_long',
        message = 'The answer reached the maximum stream length (' .. ARGV[7] .. ' events).'})
      local id = redis.call('XADD', KEYS[2], '*', 't', 'error', 'd', '{"error":' .. err .. '}')
      redis.call('HSET', KEYS[1], 'status', 'failed', 'error', err, 'updated_ms', now,
        'last_id', id)
      finish()
      return '!stream_too_long'
    end
    local id
    if ARGV[5] == '' then
      id = redis.call('XADD', KEYS[2], '*', 't', ARGV[2], 'i', ARGV[4], 'x', ARGV[3])
    else  -- a tool call's piece: its JSON
      id = redis.call('XADD', KEYS[2], '*', 't', ARGV[2], 'i', ARGV[4], 'd', ARGV[5])
    end
    redis.call('HSET', KEYS[1], 'chunks', chunks + 1, 'updated_ms', now, 'last_id', id)
    return id
  end
  local id
  if ARGV[5] == '' then
    id = redis.call('XADD', KEYS[2], '*', 't', ARGV[2])
  else
    id = redis.call('XADD', KEYS[2], '*', 't', ARGV[2], 'd', ARGV[5])
  end
  redis.call('HSET', KEYS[1], 'updated_ms', now, 'last_id', id)
  if #ARGV > 9 then redis.call('HSET', KEYS[1], unpack(ARGV, 10)) end
  if ARGV[9] ~= '' then
    redis.call('HSET', KEYS[1], 'status', ARGV[9])
    if TERMINAL[ARGV[9]] then finish() end
  end
  return id
end

local id = append()
if KEYS[4] then
  if string.sub(id, 1, 1) ~= '!' then
    redis.call('SPUBLISH', KEYS[4], id)
  elseif id == '!stream_too_long' then
    redis.call('SPUBLISH', KEYS[4], '')
  end
end
return id
