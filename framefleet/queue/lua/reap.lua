-- reap.lua: take back expired leases and promote due retries.
-- KEYS[1] prefix. ARGV: now, limit, max_deliveries.
-- Reads only the leased entries whose deadline has passed (ZRANGEBYSCORE with LIMIT), so
-- its cost grows with the expired leases, not the live ones. Each: deliveries+1, then
-- queued again, or dead as poison once deliveries reaches max_deliveries.
-- Returns {requeued, poisoned, promoted, more (1 if expired leases remain)}.
local now = now_ms()
local limit = tonumber(ARGV[2])
local max_deliveries = tonumber(ARGV[3])
local expired = redis.call('ZRANGEBYSCORE', K_LEASED, '-inf', now, 'LIMIT', 0, limit)
local requeued, poisoned = 0, 0
for _, id in ipairs(expired) do
  local key = ikey(id)
  drop_lease(id, key)
  local d = redis.call('HINCRBY', key, 'deliveries', 1)
  if d >= max_deliveries then
    to_dead(id, key, now, 'poison: its lease expired ' .. d ..
            ' times without ack or fail (crashed its worker ' .. d .. ' times)')
    poisoned = poisoned + 1
  else
    to_queued(id, key)
    requeued = requeued + 1
  end
end
stat('reaped_total', #expired)
stat('poisoned_total', poisoned)
local promoted = promote_due(now, limit)
signal(requeued + promoted)
local more = 0
if #expired == limit and redis.call('ZCOUNT', K_LEASED, '-inf', now) > 0 then more = 1 end
return {requeued, poisoned, promoted, more}
