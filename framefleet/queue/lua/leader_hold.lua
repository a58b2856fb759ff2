-- leader_hold.lua: take the leader lease, or extend it when this candidate holds it.
-- KEYS[1] prefix. ARGV: now, candidate, ttl_ms.
-- The leader key holds the candidate's id with a TTL; whoever holds it is the coordinator
-- that acts, the others stand by. Returns 1 when the candidate holds it now, else 0.
-- Runs over maxmemory too (run_when_full in _common.lua): the coordinator that sweeps must keep
-- or take the lead.
run_when_full()
local holder = redis.call('GET', K_LEADER)
if holder == false then
  redis.call('SET', K_LEADER, ARGV[2], 'PX', tonumber(ARGV[3]))
  stat('leader_changes_total')
  return 1
end
if holder == ARGV[2] then
  redis.call('PEXPIRE', K_LEADER, tonumber(ARGV[3]))
  return 1
end
return 0
