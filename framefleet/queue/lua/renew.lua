-- renew.lua: extend a lease, fenced by its token and owner.
-- KEYS[1] prefix. ARGV: now, id, token, owner, lease_ms. Writes lease_until and the leased zset.
-- Returns {'ok', new deadline} or a refusal from fence() (counted in stale_renew_total).
-- Runs over maxmemory too (run_when_full in _common.lua): work already out keeps its lease.
run_when_full()
local now = now_ms()
local id, token, owner = ARGV[2], ARGV[3], ARGV[4]
local key = ikey(id)
local refused = fence(key, token, owner, 'stale_renew_total', nil)
if refused then return refused end
local deadline = now + tonumber(ARGV[5])
redis.call('HSET', key, 'lease_until', deadline)
redis.call('ZADD', K_LEASED, 'XX', deadline, id)
return {'ok', deadline}
