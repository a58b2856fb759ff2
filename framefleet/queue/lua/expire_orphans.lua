-- expire_orphans.lua: the leases of workers whose heartbeat stopped expire now.
-- KEYS[1] prefix. ARGV: now, stale_ms.
-- A worker whose last heartbeat is older than stale_ms is gone (killed, its node lost):
-- each lease it still holds gets the deadline `now`, so the next reap takes it back at once
-- instead of when the lease would have run out; then the worker is forgotten. Leases of
-- workers that never sent a heartbeat are left to lease expiry. Cost: O(leased) when a
-- worker is stale, O(log workers) otherwise.
-- Returns {workers forgotten, leases expired}.
local now = now_ms()
local stale = redis.call('ZRANGEBYSCORE', K_WORKERS, '-inf', now - tonumber(ARGV[2]))
if #stale == 0 then return {0, 0} end
local gone = {}
for _, w in ipairs(stale) do gone[w] = true end
local expired = 0
for _, id in ipairs(redis.call('ZRANGE', K_LEASED, 0, -1)) do
  local key = ikey(id)
  if gone[redis.call('HGET', key, 'owner')] then
    redis.call('ZADD', K_LEASED, 'XX', now, id)
    redis.call('HSET', key, 'lease_until', now)
    expired = expired + 1
  end
end
redis.call('ZREM', K_WORKERS, unpack(stale))
stat('orphaned_total', expired)
return {#stale, expired}
