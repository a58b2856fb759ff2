-- retry_dead.lua: send dead letters back to queued with fresh attempt and delivery counts.
-- KEYS[1] prefix. ARGV: now, limit, then ids (none = the oldest `limit` dead letters).
-- Keeps last_error as history; clears attempts, bugs, deliveries, infra_releases, the
-- suspect marks (solo, solo_since, crash_mark), dead_reason, dead_class, dead_at.
-- Writes dead (and its class index), queued, item hashes, stats.dead_retried_total, signal. Returns the ids moved.
-- Runs over maxmemory too (run_when_full in _common.lua): it changes only what is there.
run_when_full()
local ids = dead_ids_from_argv()
local moved = {}
for _, id in ipairs(ids) do
  local key = ikey(id)
  if leave_dead(id, key) then
    redis.call('HDEL', key, 'attempts', 'bugs', 'deliveries', 'infra_releases', 'solo',
               'solo_since', 'crash_mark', 'dead_reason', 'dead_class', 'dead_at')
    event(id, tonumber(now_ms()), 'retried', 'sent back from the dead letters')
    to_queued(id, key)
    moved[#moved + 1] = id
  end
end
stat('dead_retried_total', #moved)
signal(#moved)
return moved
