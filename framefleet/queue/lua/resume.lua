-- resume.lua: un-pause the queue and wake blocked claimers.
-- KEYS[1] prefix. ARGV: now. Writes meta.paused, signal. Returns the queued count.
-- Runs over maxmemory too (run_when_full in _common.lua): it changes only what is there.
run_when_full()
redis.call('HDEL', K_META, 'paused')
local queued = redis.call('ZCARD', K_QUEUED)
signal(queued)
return queued
