-- cancel.lua: cancel a queued or delayed item: it becomes a dead letter with the reason
-- "cancelled: <why>" (retry_dead brings it back). A leased, done or dead item is left alone.
-- KEYS[1] prefix. ARGV: now, id, why. Writes queued/delayed, dead, the item hash,
-- stats.cancelled_total. Returns the state the item was in ('' if there is no such item).
-- Runs over maxmemory too (run_when_full in _common.lua): it changes only what is there.
run_when_full()
local now = now_ms()
local id = ARGV[2]
local key = ikey(id)
local state = redis.call('HGET', key, 'state')
if not state then return '' end
if state == 'queued' or state == 'delayed' then
  redis.call('ZREM', K_QUEUED, id)
  redis.call('ZREM', K_DELAYED, id)
  redis.call('HDEL', key, 'ready_at')
  to_dead(id, key, now, 'cancelled: ' .. ARGV[3], 'cancelled')
  stat('cancelled_total')
end
return state
