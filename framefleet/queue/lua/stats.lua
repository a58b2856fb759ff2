-- stats.lua: one consistent snapshot of a queue (read-only).
-- KEYS[1] prefix. ARGV: now.
-- Returns {now, paused, queued, delayed, leased, done, dead, inbox, rejected,
--          oldest queued item's created time (-1 if none), {counter, value, ...}}.
-- The oldest queued item is the head of one of the ten priority bands (FIFO within a band).
local now = now_ms()
local oldest = -1
for pri = 0, 9 do
  local lo = qscore(pri, 0)
  local hi = string.format('(%.0f', lo + PRI_SPAN) -- '..' would print only 14 digits
  local head = redis.call('ZRANGEBYSCORE', K_QUEUED, lo, hi, 'LIMIT', 0, 1)
  if head[1] then
    local created = tonumber(redis.call('HGET', ikey(head[1]), 'created'))
    if created and (oldest < 0 or created < oldest) then oldest = created end
  end
end
return {now, redis.call('HGET', K_META, 'paused') or '0',
        redis.call('ZCARD', K_QUEUED), redis.call('ZCARD', K_DELAYED),
        redis.call('ZCARD', K_LEASED), redis.call('ZCARD', K_DONE), redis.call('ZCARD', K_DEAD),
        redis.call('LLEN', K_INBOX), redis.call('LLEN', K_REJECTED), oldest,
        redis.call('HGETALL', K_STATS)}
