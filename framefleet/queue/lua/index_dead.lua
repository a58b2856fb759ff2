-- index_dead.lua: rebuild the class index of the dead letters (deadc:<cls>, dead_classes)
-- from the dead zset and each dead letter's dead_class: for dead letters written before the
-- scripts kept the index (an upgrade). O(dead letters); Queue.dead_classes runs it only when
-- the index does not add up to the dead zset.
-- KEYS[1] prefix. ARGV: now. Returns the number of dead letters indexed.
-- Runs over maxmemory too (run_when_full in _common.lua): it rebuilds an index of the same
-- size, for a read.
run_when_full()
local classes = redis.call('SMEMBERS', K_DEAD_CLASSES)
for _, cls in ipairs(classes) do redis.call('DEL', dkey(cls)) end
redis.call('DEL', K_DEAD_CLASSES)
local dead = redis.call('ZRANGE', K_DEAD, 0, -1, 'WITHSCORES')
for i = 1, #dead, 2 do
  local id, at = dead[i], dead[i + 1]
  local cls = redis.call('HGET', ikey(id), 'dead_class') or 'unknown'
  redis.call('ZADD', dkey(cls), at, id)
  redis.call('SADD', K_DEAD_CLASSES, cls)
end
return #dead / 2
