-- audit.lua: add an operator's action to the audit log, at its head; the oldest beyond the
-- cap are dropped.
-- KEYS[1] prefix. ARGV: now, cap, the entry (JSON). Writes audit. Returns nothing.
-- Runs over maxmemory too (run_when_full in _common.lua): the log is capped, and an
-- operator's purge at the limit (what frees memory) must not fail at its audit.
run_when_full()
redis.call('LPUSH', K_AUDIT, ARGV[3])
redis.call('LTRIM', K_AUDIT, 0, tonumber(ARGV[2]) - 1)
