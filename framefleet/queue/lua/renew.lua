-- renew.lua: extend a lease, fenced by its epoch.
-- KEYS[1] prefix. ARGV: now, id, epoch, lease_ms. Writes lease_until and the leased zset.
-- Returns {'ok', new deadline} or a refusal from fence() (counted in stale_renew_total).
local now = now_ms()
local id, epoch = ARGV[2], ARGV[3]
local key = ikey(id)
local refused = fence(key, epoch, 'stale_renew_total', nil)
if refused then return refused end
local deadline = now + tonumber(ARGV[4])
redis.call('HSET', key, 'lease_until', deadline)
redis.call('ZADD', K_LEASED, 'XX', deadline, id)
return {'ok', deadline}
