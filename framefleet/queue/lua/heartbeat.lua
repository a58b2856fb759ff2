-- heartbeat.lua: a worker says it is alive (or that it has left).
-- KEYS[1] prefix. ARGV: now, worker, mode ('beat' | 'leave').
-- The workers zset holds worker -> time of its last heartbeat (ms, the server's clock when
-- now is empty). Returns the time written, or 0 after 'leave'.
local now = now_ms()
if ARGV[3] == 'leave' then
  redis.call('ZREM', K_WORKERS, ARGV[2])
  redis.call('HDEL', K_NONCES, ARGV[2])
  return 0
end
redis.call('ZADD', K_WORKERS, now, ARGV[2])
return now
