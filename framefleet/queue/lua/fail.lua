-- fail.lua: a leased item failed, fenced by its token and owner.
-- KEYS[1] prefix. ARGV: now, id, token, owner, error, retryable (0|1), max_attempts, base_ms,
-- cap_ms, jitter (a uniform number in [0, 1) drawn by the caller).
-- attempts+1 and last_error always. Retryable and attempts < max_attempts: delayed for
-- d/2 + jitter*d/2 ms with d = min(cap, base * 2^(attempts-1)) (exponential backoff with
-- jitter). Otherwise dead with its reason.
-- Returns {'ok', 'delayed', delay_ms} | {'ok', 'dead', reason} | a refusal (stale_fail_total).
local now = now_ms()
local id, token, owner, err = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local retryable = ARGV[6] == '1'
local key = ikey(id)
local refused = fence(key, token, owner, 'stale_fail_total', nil)
if refused then return refused end
drop_lease(id, key)
local attempts = redis.call('HINCRBY', key, 'attempts', 1)
redis.call('HSET', key, 'last_error', err)
stat('failed_total')
local max_attempts = tonumber(ARGV[7])
if not retryable then
  local reason = 'failed (not retryable): ' .. err
  to_dead(id, key, now, reason)
  return {'ok', 'dead', reason}
end
if attempts >= max_attempts then
  local reason = 'failed ' .. attempts .. ' times (max_attempts ' .. max_attempts .. '): ' .. err
  to_dead(id, key, now, reason)
  return {'ok', 'dead', reason}
end
local d = math.min(tonumber(ARGV[9]), tonumber(ARGV[8]) * 2 ^ (attempts - 1))
local delay = math.floor(d / 2 + tonumber(ARGV[10]) * d / 2)
redis.call('ZADD', K_DELAYED, now + delay, id)
redis.call('HSET', key, 'state', 'delayed', 'ready_at', now + delay)
stat('retried_total')
return {'ok', 'delayed', delay}
