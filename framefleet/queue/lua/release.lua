-- release.lua: give a leased item back without counting an attempt: at once (preemption,
-- shutdown) or after delay_ms (the infrastructure failed: a full disk, an output store that
-- does not answer). Fenced by its token and owner.
-- KEYS[1] prefix. ARGV: now, id, token, owner, reason, delay_ms.
-- Writes state queued (at its original FIFO place) or delayed, release_reason;
-- stats.released_total; one wake-up token. Returns {'ok'} | a refusal (stale_release_total).
local now = now_ms()
local id, token, owner = ARGV[2], ARGV[3], ARGV[4]
local delay = tonumber(ARGV[6]) or 0
local key = ikey(id)
local refused = fence(key, token, owner, 'stale_release_total', nil)
if refused then return refused end
drop_lease(id, key)
redis.call('HSET', key, 'release_reason', ARGV[5])
stat('released_total')
if delay > 0 then
  redis.call('ZADD', K_DELAYED, now + delay, id)
  redis.call('HSET', key, 'state', 'delayed', 'ready_at', now + delay)
  return {'ok'}
end
to_queued(id, key)
signal(1)
return {'ok'}
