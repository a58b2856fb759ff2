-- purge_dead.lua: delete dead letters for good (their ids become new again).
-- KEYS[1] prefix. ARGV: now, limit, then ids (none = the oldest `limit` dead letters).
-- Deletes the item hash and chunk set; writes dead (and its class index),
-- stats.dead_purged_total.
-- Returns the ids deleted.
-- Runs over maxmemory too (run_when_full in _common.lua): it frees memory.
run_when_full()
local ids = dead_ids_from_argv()
local purged = {}
for _, id in ipairs(ids) do
  if leave_dead(id, ikey(id)) then
    redis.call('DEL', ikey(id), ckey(id), ekey(id))
    purged[#purged + 1] = id
  end
end
stat('dead_purged_total', #purged)
return purged
