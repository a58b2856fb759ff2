-- release.lua: give a leased item back at once, without counting an attempt (preemption,
-- shutdown). Fenced by its token and owner. KEYS[1] prefix. ARGV: now, id, token, owner,
-- reason. Writes state queued (at its original FIFO place), release_reason;
-- stats.released_total; one wake-up token. Returns {'ok'} | a refusal (stale_release_total).
local id, token, owner = ARGV[2], ARGV[3], ARGV[4]
local key = ikey(id)
local refused = fence(key, token, owner, 'stale_release_total', nil)
if refused then return refused end
drop_lease(id, key)
to_queued(id, key)
redis.call('HSET', key, 'release_reason', ARGV[5])
stat('released_total')
signal(1)
return {'ok'}
