-- fail.lua: a leased item failed, fenced by its token and owner.
-- KEYS[1] prefix. ARGV: now, id, token, owner, error, mode, max_attempts, base_ms, cap_ms,
-- jitter (a uniform number in [0, 1) drawn by the caller), class.
-- mode 'permanent': dead at once with its reason and class (attempts+1).
-- mode 'retry': attempts+1; below max_attempts delayed for d/2 + jitter*d/2 ms with
--   d = min(cap, base * 2^(attempts-1)) (exponential backoff with jitter), else dead.
-- mode 'bug' (an error nobody classified): the same with bugs+1 instead of attempts, and the
--   class internal_error when dead: the item is not charged an attempt for a bug, but a bug
--   it triggers every time cannot loop for ever.
-- last_error and failed[class] always (internal_error for a bug). Returns {'ok', 'delayed', delay_ms} | {'ok', 'dead', reason} | a
-- refusal (stale_fail_total).
-- Runs over maxmemory too (run_when_full in _common.lua): it ends work already out.
run_when_full()
local now = now_ms()
local id, token, owner, err, mode = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local max_attempts = tonumber(ARGV[7])
local cls = ARGV[11]
local key = ikey(id)
local refused = fence(key, token, owner, 'stale_fail_total', nil)
if refused then return refused end
drop_lease(id, key)
local counter = 'attempts'
if mode == 'bug' then counter = 'bugs' end
local n = redis.call('HINCRBY', key, counter, 1)
redis.call('HSET', key, 'last_error', err)
stat('failed_total')
if mode == 'bug' then
  redis.call('HINCRBY', K_FAILED, 'internal_error', 1)
else
  redis.call('HINCRBY', K_FAILED, cls, 1)
end
if mode == 'permanent' then
  local reason = 'failed (not retryable): ' .. err
  to_dead(id, key, now, reason, cls)
  return {'ok', 'dead', reason}
end
if n >= max_attempts then
  local reason = 'failed ' .. n .. ' times (max_attempts ' .. max_attempts .. '): ' .. err
  if mode == 'bug' then
    cls = 'internal_error'
    reason = 'internal error ' .. n .. ' times (max_attempts ' .. max_attempts ..
             '; see the worker log for the traceback): ' .. err
  end
  to_dead(id, key, now, reason, cls)
  return {'ok', 'dead', reason}
end
local d = math.min(tonumber(ARGV[9]), tonumber(ARGV[8]) * 2 ^ (n - 1))
local delay = math.floor(d / 2 + tonumber(ARGV[10]) * d / 2)
redis.call('ZADD', K_DELAYED, now + delay, id)
redis.call('HSET', key, 'state', 'delayed', 'ready_at', now + delay)
event(id, now, 'failed', cls .. ': ' .. err .. ' (' .. counter .. ' ' .. n .. ' of ' ..
      max_attempts .. '; retried in ' .. string.format('%.1f', delay / 1000) .. ' s)')
stat('retried_total')
return {'ok', 'delayed', delay}
