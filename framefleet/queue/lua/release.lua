-- release.lua: give a leased item back without counting an attempt: at once (preemption,
-- shutdown) or after delay_ms (the infrastructure failed: a full disk, an output store that
-- does not answer). Fenced by its token and owner.
-- KEYS[1] prefix. ARGV: now, id, token, owner, reason, delay_ms, class, bound.
-- With a class (the infrastructure failed for this video's sake: larger than any node's
-- temporary space, say), the item's infra_releases count goes up, and at `bound` of them it
-- is dead with that class instead: such a release would repeat on every node for ever.
-- Writes state queued (at its original FIFO place) or delayed (or dead), release_reason;
-- stats.released_total; one wake-up token. Returns {'ok'} | {'ok', 'dead', reason} | a
-- refusal (stale_release_total).
-- Runs over maxmemory too (run_when_full in _common.lua): it ends work already out.
run_when_full()
local now = now_ms()
local id, token, owner = ARGV[2], ARGV[3], ARGV[4]
local delay = tonumber(ARGV[6]) or 0
local cls, bound = ARGV[7] or '', tonumber(ARGV[8]) or 0
local key = ikey(id)
local refused = fence(key, token, owner, 'stale_release_total', nil)
if refused then return refused end
drop_lease(id, key)
redis.call('HSET', key, 'release_reason', ARGV[5])
if cls ~= '' then
  local n = redis.call('HINCRBY', key, 'infra_releases', 1)
  if n >= bound then
    local reason = 'released ' .. n .. ' times for the same reason: ' .. ARGV[5]
    redis.call('HSET', key, 'last_error', ARGV[5])
    redis.call('HINCRBY', K_FAILED, cls, 1)
    stat('failed_total')
    to_dead(id, key, now, reason, cls)
    return {'ok', 'dead', reason}
  end
end
stat('released_total')
event(id, now, 'released', ARGV[5] .. ' (not charged' ..
      (delay > 0 and ('; again in ' .. string.format('%.1f', delay / 1000) .. ' s)') or ')'))
if delay > 0 then
  redis.call('ZADD', K_DELAYED, now + delay, id)
  redis.call('HSET', key, 'state', 'delayed', 'ready_at', now + delay)
  return {'ok'}
end
to_queued(id, key)
signal(1)
return {'ok'}
