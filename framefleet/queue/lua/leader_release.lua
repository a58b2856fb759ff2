-- leader_release.lua: give the leader lease up, only if this candidate holds it.
-- KEYS[1] prefix. ARGV: now, candidate. Returns 1 when it was released, else 0.
-- Runs over maxmemory too (run_when_full in _common.lua): it frees memory.
run_when_full()
if redis.call('GET', K_LEADER) == ARGV[2] then
  redis.call('DEL', K_LEADER)
  return 1
end
return 0
