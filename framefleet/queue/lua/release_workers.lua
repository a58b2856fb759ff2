-- release_workers.lua: a fleet-wide event ended some workers (their Ray driver exited, their
-- node was lost): every lease they hold goes back to queued at once, with no delivery
-- counted (lapse() 'amnesty'), and the workers are forgotten and retired: the names, or the
-- prefix, go into `retired`, so that a worker that still runs (its raylet has not given up on
-- a dead head yet, its node is cut off) claims nothing more and cannot beat again (claim.lua,
-- heartbeat.lua). Entries older than RETIRED_MS are dropped here: by then Ray has ended any
-- such process (a raylet gives up on its head within gcs_rpc_server_reconnect_timeout_s).
-- KEYS[1] prefix. ARGV: now, reason, mode ('names' | 'prefix'), then the worker names, or
-- one prefix matched against every worker holding a lease or sending heartbeats.
-- Writes: leased, queued, item hashes, the worker index, workers, nonces, retired,
-- stats.fleet_released_total, signal. Returns the number of leases released.
-- Runs over maxmemory too (run_when_full in _common.lua): leases of ended workers come back.
run_when_full()
local RETIRED_MS = 86400000 -- a day
local now = now_ms()
local reason, mode = ARGV[2], ARGV[3]
local targets = {}
redis.call('ZREMRANGEBYSCORE', K_RETIRED, '-inf', now - RETIRED_MS)
if mode == 'prefix' then
  local prefix, seen = ARGV[4], {}
  redis.call('ZADD', K_RETIRED, now, prefix)
  local function match(list)
    for _, w in ipairs(list) do
      if not seen[w] and string.sub(w, 1, #prefix) == prefix then
        seen[w] = true
        targets[#targets + 1] = w
      end
    end
  end
  match(redis.call('SMEMBERS', K_HOLDERS))
  match(redis.call('ZRANGE', K_WORKERS, 0, -1))
else
  for i = 4, #ARGV do targets[#targets + 1] = ARGV[i] end
end
local released = 0
for _, w in ipairs(targets) do
  for _, id in ipairs(redis.call('SMEMBERS', hkey(w))) do
    local key = ikey(id)
    if redis.call('HGET', key, 'owner') == w and redis.call('ZSCORE', K_LEASED, id) then
      lapse(id, key, now, 'amnesty', 0, reason)
      released = released + 1
    end
  end
  redis.call('DEL', hkey(w))
  redis.call('SREM', K_HOLDERS, w)
  redis.call('HDEL', K_SOLO, w)
  redis.call('HDEL', K_NONCES, w)
  redis.call('ZREM', K_WORKERS, w)
  redis.call('HDEL', K_WORKER_INFO, w)
  if mode ~= 'prefix' then redis.call('ZADD', K_RETIRED, now, w) end
end
stat('fleet_released_total', released)
signal(released)
return released
