-- resume.lua: un-pause the queue and wake blocked claimers.
-- KEYS[1] prefix. ARGV: now. Writes meta.paused, signal. Returns the queued count.
redis.call('HDEL', K_META, 'paused')
local queued = redis.call('ZCARD', K_QUEUED)
signal(queued)
return queued
