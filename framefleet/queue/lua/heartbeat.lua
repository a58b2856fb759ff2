-- heartbeat.lua: a worker says it is alive, or that it has left.
-- KEYS[1] prefix. ARGV: now, worker, mode ('beat' | 'sync' | 'leave'), grace_ms, info (what
-- the worker says of itself, JSON: node, pid, host; '' for nothing), ids...
-- The workers zset holds worker -> time of its last heartbeat (ms, the server's clock when
-- now is empty). With 'sync' the worker also says which items it holds (ids): a lease the
-- queue has it holding that it does not know of, claimed more than grace_ms ago, goes back
-- to queued at once, uncharged (lapse() 'amnesty'): the reply of its claim was lost, or the
-- server lost the write of its ack (a crash with everysec), or its thread gave up on it.
-- A retired worker (release_workers.lua) is not written: it is told, with -1, and stops.
-- Returns the time written (0 after 'leave', -1 for a retired worker), the number of
-- leases given back, the coordinator holding the leader lease ('' for none) and whether
-- the worker's info is known (1|0): a worker sends its info once, and again only when the
-- queue has lost it, and learns who leads without a call of its own (at 20,000 workers
-- those were a third of the calls: bench/simulate.py).
-- Runs over maxmemory too (run_when_full in _common.lua): a worker that cannot beat would look
-- dead and lose its leases.
run_when_full()
local now = now_ms()
local worker, mode = ARGV[2], ARGV[3]
if mode == 'leave' then
  redis.call('ZREM', K_WORKERS, worker)
  redis.call('HDEL', K_NONCES, worker)
  redis.call('HDEL', K_WORKER_INFO, worker)
  return {0, 0, '', 0}
end
if retired(worker) then return {-1, 0, '', 0} end
redis.call('ZADD', K_WORKERS, now, worker)
local known = 1
if ARGV[5] ~= '' then
  redis.call('HSET', K_WORKER_INFO, worker, ARGV[5])
else
  known = redis.call('HEXISTS', K_WORKER_INFO, worker)
end
local back = 0
if mode == 'sync' then
  local known = {}
  local holds = {}
  for i = 6, #ARGV do holds[ARGV[i]] = true end
  local before = now - tonumber(ARGV[4])
  for _, id in ipairs(redis.call('SMEMBERS', hkey(worker))) do
    if not holds[id] then
      local key = ikey(id)
      local f = redis.call('HMGET', key, 'owner', 'claimed_at', 'state')
      if f[1] == worker and f[3] == 'leased' and (tonumber(f[2]) or 0) < before then
        lapse(id, key, now, 'amnesty', 0, 'its worker ' .. worker .. ' no longer held it')
        back = back + 1
      end
    end
  end
  stat('unheld_total', back)
  signal(back)
end
return {now, back, redis.call('GET', K_LEADER) or '', known}
