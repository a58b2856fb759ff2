-- health.lua: the leader coordinator's health report, replacing the last one.
-- KEYS[1] prefix. ARGV: now, the report (JSON), ttl_ms. Writes health (with its TTL).
-- Returns nothing.
-- Runs over maxmemory too (run_when_full in _common.lua): one bounded report replacing
-- another, and the dashboard and /readyz must still hear from a leader at the limit.
run_when_full()
redis.call('SET', K_HEALTH, ARGV[2], 'PX', tonumber(ARGV[3]))
