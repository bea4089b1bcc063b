-- Forget a chat's active session, if the record still names it (a newer request of the
-- same chat may have replaced it since).
-- KEYS[1] the chat record (`keys.chat`); ARGV[1] the value it held.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
