-- sweep.lua: the queue's upkeep, run on a cadence by the coordinator and the decode actors
-- (and by hand: Queue.reap). KEYS[1] prefix.
-- ARGV: now, limit, max_deliveries, stale_ms (-1: skip step 2), gap_ms (-1: skip step 1),
--       lease_ms, done_ttl_ms, dead_ttl_ms, judge ('0': the caller cannot tell a dead worker
--       from a live one just now (its fleet lost the Ray GCS): step 3 charges nothing).
-- 0. Times ahead: a clock stepped back (NTP correcting a clock that ran ahead, a failover to a
--    server whose clock is behind) leaves the heartbeats, lease deadlines and grace written
--    meanwhile ahead of now, which would keep a silent worker looking alive, its leases
--    unexpired and the grace on for as long as the clock had been ahead. Each is brought
--    back to the most it can be under one clock: heartbeats more than AHEAD_MS ahead to now,
--    deadlines beyond now + lease_ms (+ AHEAD_MS) to now + lease_ms (up to `limit` a sweep),
--    grace_until beyond now + stale_ms (+ AHEAD_MS) to now + stale_ms. O(log n) when nothing
--    is ahead.
-- 1. A gap: when the last sweep (meta.swept_at) is more than gap_ms ago, the cadence broke:
--    the server was down, its clock jumped forward, or nobody swept. Workers may not have
--    been able to renew either, so the leases that ran out since get a new lease_ms instead
--    of being reaped, and for stale_ms (meta.grace_until) heartbeats are not held against
--    their workers (only workers marked gone count as dead).
-- 2. Orphans (through held:<worker>, so O(their leases), up to `limit` leases a sweep, whole
--    workers at a time; the rest in the next pass): the leases of workers marked gone
--    (score 0: Ray said their process died) expire now, for the reap to judge; those of
--    workers merely silent for stale_ms (a node lost without Ray saying so yet, a
--    partition, a stopped process: nothing tells the video's fault from the node's) go back
--    at once as suspects, uncharged; but a silent worker that held only a suspect (a video
--    whose worker went silent before) is charged to it. Workers silent for 3 x stale_ms are
--    forgotten.
-- 3. Reap: leases past their deadline end, with a blame (lapse() in _common.lua): when all
--    the leases of a worker that held several ran out together, the worker failed and the
--    blame is shared ('suspect' each: no delivery, retried alone); otherwise (it held only
--    this one, or it renewed its others) the evidence points at the item ('charge'), but
--    in a grace, when its worker is silent (step 2 did not judge it), a suspect's. Not
--    judging (a fleet whose GCS is lost: its workers' leases run out apart, in different
--    sweeps, and would each be charged alone), every lapse is a suspect's.
-- 4. Due retries move from delayed to queued.
-- 5. Retention: at most `limit` done items older than done_ttl_ms and dead ones older than
--    dead_ttl_ms are deleted (hash and chunk set): a bounded batch per sweep.
-- Writes: meta.swept_at/grace_until, leased, queued, dead, done, item hashes, the worker
-- index, workers, stats (reaped_total, poisoned_total, orphaned_total, forgiven_total,
-- trimmed_total, clock_clamped_total), signal.
-- Returns {requeued, poisoned, promoted, workers orphaned (with leases), leases orphaned,
--          leases forgiven,
--          more (1 if expired leases or workers gone with leases remain: another pass)}.
-- Runs over maxmemory too (run_when_full in _common.lua): its retention is what frees memory,
-- and leases must still be reaped.
run_when_full()
local now = now_ms()
local limit = tonumber(ARGV[2])
local max_deliveries = tonumber(ARGV[3])
local stale_ms, gap_ms, lease_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local done_ttl_ms, dead_ttl_ms = tonumber(ARGV[7]), tonumber(ARGV[8])
local judge = ARGV[9] ~= '0'

-- 0. times ahead
local AHEAD_MS = 1000 -- a step back of the clock within this is left alone
local function above(t) return string.format('(%.0f', t) end
local m = redis.call('HMGET', K_META, 'swept_at', 'grace_until')
local beats = redis.call('ZRANGEBYSCORE', K_WORKERS, above(now + AHEAD_MS), '+inf',
                         'LIMIT', 0, limit)
local clamped = #beats
for _, w in ipairs(beats) do redis.call('ZADD', K_WORKERS, 'XX', now, w) end
local longest = now + lease_ms
local late = redis.call('ZRANGEBYSCORE', K_LEASED, above(longest + AHEAD_MS), '+inf',
                        'LIMIT', 0, limit)
for _, id in ipairs(late) do
  redis.call('ZADD', K_LEASED, 'XX', longest, id)
  redis.call('HSET', ikey(id), 'lease_until', longest)
end
clamped = clamped + #late
if stale_ms >= 0 and m[2] and tonumber(m[2]) > now + stale_ms + AHEAD_MS then
  m[2] = now + stale_ms
  redis.call('HSET', K_META, 'grace_until', m[2])
  clamped = clamped + 1
end
stat('clock_clamped_total', clamped)

-- 1. gap
local forgiven = 0
local grace = m[2] ~= false and now < tonumber(m[2])
if gap_ms >= 0 then
  local last = tonumber(m[1])
  redis.call('HSET', K_META, 'swept_at', now)
  if last and now - last > gap_ms then
    local ids = redis.call('ZRANGEBYSCORE', K_LEASED, '(' .. last, now)
    local deadline = now + lease_ms
    for _, id in ipairs(ids) do
      redis.call('ZADD', K_LEASED, 'XX', deadline, id)
      redis.call('HSET', ikey(id), 'lease_until', deadline)
    end
    forgiven = #ids
    redis.call('HSET', K_META, 'grace_until', now + math.max(stale_ms, 0))
    stat('forgiven_total', forgiven)
    grace = true
  end
end

-- 2. orphans
local gone, orphaned, orphans, silent, silent_poisoned = {}, 0, 0, 0, 0
local orphans_left = false -- workers left for the next pass (this one did `limit` leases)
if stale_ms >= 0 then
  if grace then
    gone = redis.call('ZRANGEBYSCORE', K_WORKERS, 0, 0)
  else
    gone = redis.call('ZRANGEBYSCORE', K_WORKERS, '-inf', now - stale_ms)
  end
  for _, w in ipairs(gone) do
    if orphaned >= limit then orphans_left = true; break end
    local known_dead = tonumber(redis.call('ZSCORE', K_WORKERS, w)) == 0
    local live = {}
    for _, id in ipairs(redis.call('SMEMBERS', hkey(w))) do
      if redis.call('HGET', ikey(id), 'owner') == w and redis.call('ZSCORE', K_LEASED, id) then
        live[#live + 1] = id
      end
    end
    -- Silent holding only a video that was a suspect already (handed out alone after an
    -- earlier silence): the evidence now points at the video, which freezes its worker
    -- each time; charged, so that it ends as poison instead of costing a worker for ever.
    local alone = #live == 1 and redis.call('HGET', ikey(live[1]), 'solo') == '1'
    for _, id in ipairs(live) do
      local key = ikey(id)
      if known_dead then -- its process died, Ray said: the reap below judges it
        redis.call('ZADD', K_LEASED, 'XX', now, id)
        redis.call('HSET', key, 'lease_until', now)
      elseif alone then
        if lapse(id, key, now, 'charge', max_deliveries) then
          silent_poisoned = silent_poisoned + 1
        end
        silent = silent + 1
      else -- silent, nobody says why (a node lost unannounced, a partition): a suspect
        lapse(id, key, now, 'suspect', max_deliveries)
        silent = silent + 1
      end
      orphaned = orphaned + 1
    end
    if #live > 0 then orphans = orphans + 1 end
  end
  -- Forgotten a while later, so that the coordinator sees them stale (and kills them)
  -- meanwhile; those marked gone (score 0) go now.
  local old = gone
  if not grace then old = redis.call('ZRANGEBYSCORE', K_WORKERS, '-inf', now - 3 * stale_ms) end
  if #old > 0 and not orphans_left then -- (not before all their leases are handled)
    bulk('ZREM', K_WORKERS, old)
    bulk('HDEL', K_WORKER_INFO, old)
    bulk('HDEL', K_NONCES, old)
  end
  stat('orphaned_total', orphaned)
end

-- 3. reap
-- Whether all of a worker's leases have run out (it failed as a whole), and then its lease
-- ids. A live worker is told apart by its first live lease found (SSCAN, a few at a time).
local function failed_whole(owner)
  local cursor = '0'
  repeat
    local page = redis.call('SSCAN', hkey(owner), cursor, 'COUNT', 16)
    cursor = page[1]
    for _, id in ipairs(page[2]) do
      local deadline = redis.call('ZSCORE', K_LEASED, id)
      if deadline and tonumber(deadline) > now then return false, nil end
    end
  until cursor == '0'
  return true, redis.call('SMEMBERS', hkey(owner))
end

local requeued, poisoned, handled = silent - silent_poisoned, silent_poisoned, silent
local done_owner = {}
local room = math.max(limit - orphaned, 1) -- the leases this pass may still reap
local expired = redis.call('ZRANGEBYSCORE', K_LEASED, '-inf', now, 'LIMIT', 0, room)
local function reap_one(id, blame)
  if not judge then blame = 'suspect' end -- no evidence either way: uncharged, retried alone
  local key = ikey(id)
  if not redis.call('ZSCORE', K_LEASED, id) then return end -- handled with its worker
  handled = handled + 1
  if lapse(id, key, now, blame, max_deliveries) then
    poisoned = poisoned + 1
  else
    requeued = requeued + 1
  end
end
-- In a grace, a worker whose heartbeat is stale (or forgotten) was not judged in step 2:
-- its silence may be the gap's. A lease of it that runs out meanwhile says nothing about
-- the video either: a suspect's, as step 2 would have made it.
local function silent_in_grace(owner)
  if not grace or stale_ms < 0 then return false end
  local beat = redis.call('ZSCORE', K_WORKERS, owner)
  return not beat or (tonumber(beat) > 0 and tonumber(beat) <= now - stale_ms)
end
for _, id in ipairs(expired) do
  local owner = redis.call('HGET', ikey(id), 'owner')
  if owner and not done_owner[owner] then
    done_owner[owner] = true
    local whole, ids = failed_whole(owner)
    if whole and #ids > 1 then
      for _, other in ipairs(ids) do reap_one(other, 'suspect') end
    else
      reap_one(id, silent_in_grace(owner) and 'suspect' or 'charge')
    end
  elseif not owner then
    reap_one(id, 'charge')
  elseif redis.call('ZSCORE', K_LEASED, id) then
    -- its worker renews others: this one is stuck (unless the worker is silent in a grace)
    reap_one(id, silent_in_grace(owner) and 'suspect' or 'charge')
  end
end
stat('reaped_total', handled)
stat('poisoned_total', poisoned)

-- 4. due retries
local promoted = promote_due(now, limit)
signal(requeued + promoted)

-- 5. retention
local trimmed = 0
for zset, ttl in pairs({[K_DONE] = done_ttl_ms, [K_DEAD] = dead_ttl_ms}) do
  local old = redis.call('ZRANGEBYSCORE', zset, '-inf', now - ttl, 'LIMIT', 0, limit)
  for _, id in ipairs(old) do
    if zset == K_DEAD then leave_dead(id, ikey(id)) end
    redis.call('DEL', ikey(id), ckey(id), ekey(id))
  end
  bulk('ZREM', zset, old)
  trimmed = trimmed + #old
end
stat('trimmed_total', trimmed)

local more = 0
if orphans_left or (#expired == room and redis.call('ZCOUNT', K_LEASED, '-inf', now) > 0) then
  more = 1
end
return {requeued, poisoned, promoted, orphans, orphaned, forgiven, more}
