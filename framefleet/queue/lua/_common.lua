-- _common.lua: helpers prepended to every framefleet script (not a script of its own).
--
-- KEYS[1] is the queue's key prefix, hash tag included ("ff:{videos}:"); the layout is
-- documented in framefleet/queue/keys.py. Times are integer milliseconds. ARGV[1] is always
-- "now": empty means the server's clock (TIME), a number means the caller's clock (tests).

local P = KEYS[1]
local K_QUEUED = P .. 'queued'
local K_DELAYED = P .. 'delayed'
local K_LEASED = P .. 'leased'
local K_DONE = P .. 'done'
local K_DEAD = P .. 'dead'
local K_SIGNAL = P .. 'signal'
local K_INBOX = P .. 'inbox'
local K_REJECTED = P .. 'rejected'
local K_META = P .. 'meta'
local K_STATS = P .. 'stats'
local K_WORKERS = P .. 'workers'
local K_LEADER = P .. 'leader'
local K_HOLDERS = P .. 'holders' -- workers holding at least one lease
local K_SOLO = P .. 'solo'       -- worker -> the suspect item it holds (nothing else meanwhile)
local K_NONCES = P .. 'nonces'   -- worker -> the nonce of its last claim that leased anything
local K_WORKER_INFO = P .. 'worker_info' -- worker -> what it said of itself (JSON: node, pid)
local K_RETIRED = P .. 'retired' -- worker name or group -> when a fleet-wide event ended it
local K_DEAD_CLASSES = P .. 'dead_classes' -- the classes that have dead letters (deadc:<cls>)
local K_FAILED = P .. 'failed'   -- failure class -> failures (every fail, retried or not)
local K_BUSY = P .. 'busy'       -- 'decode' | 'inference:<device>' -> busy ms (checkpointed)
local K_REVS = P .. 'revs'       -- id -> its newest revision, once forced (outlives the item)
local K_HEALTH = P .. 'health'   -- the leader's last health report (JSON, with a TTL)
local K_AUDIT = P .. 'audit'     -- operators' actions, newest first (capped)
local K_OUTCOMES = P .. 'outcomes' -- stream: each item's end (done, dead), for its enqueuer
local K_WEBHOOK_FAILURES = P .. 'webhook_failures' -- the newest failed webhook attempts

local PRI_SPAN = 17592186044416 -- 2^44: FIFO sequence numbers stay below it
local SIGNAL_CAP = 256          -- wake-up tokens kept at most
local OUTCOMES_CAP = 100000     -- outcome entries kept at about (framefleet/queue/keys.py)
local EVENTS_CAP = 20           -- an item's history: its newest events kept

local function ikey(id) return P .. 'item:' .. id end
local function ckey(id) return P .. 'chunks:' .. id end
local function hkey(worker) return P .. 'held:' .. worker end -- the ids a worker leases
local function dkey(cls) return P .. 'deadc:' .. cls end -- the dead letters of one class
local function ekey(id) return P .. 'events:' .. id end -- an item's history

-- One event in an item's history (oldest first, the newest EVENTS_CAP kept): what happened
-- to it and why, for its page and `framefleet show`. {at (ms), what, detail}.
local function event(id, now, what, detail)
  local e = {at = now, what = what}
  if detail and detail ~= '' then e['detail'] = detail end
  redis.call('RPUSH', ekey(id), cjson.encode(e))
  redis.call('LTRIM', ekey(id), -EVENTS_CAP, -1)
end

-- A worker ended by a fleet-wide event (release_workers.lua), by its own name or by its group
-- (the name up to its last '-' when a number follows: `decoder-<generation>-`, a fleet's
-- decode actors). Such a worker may still run (a raylet that has not given up on a dead head
-- yet, a partitioned node): it gets no lease and no place among the live workers again.
local function retired(worker)
  if redis.call('ZSCORE', K_RETIRED, worker) then return true end
  local group = string.match(worker, '^(.*%-)%d+$')
  return group ~= nil and redis.call('ZSCORE', K_RETIRED, group) ~= false
end

-- A full server. framefleet wants maxmemory-policy noeviction, so over maxmemory the server
-- refuses the commands that may grow memory ("deny-oom": HSET, HINCRBY, ZADD, SADD, LPUSH,
-- SET...). A script is refused only at its FIRST write, and only when that write is
-- deny-oom and the server was over the limit as the script started; once it has written
-- anything, all its later writes go through (it cannot be stopped halfway). So a refused
-- script has changed nothing. That is Redis 6.2's rule, and Redis 7+'s and Valkey's for a
-- script without a `#!lua flags=...` line: framefleet's scripts have none, since Redis 6.2
-- cannot read one. Which a script does at the limit is therefore said by its first write,
-- and every script that writes starts with one of these two, not left to how its own
-- writes happen to be ordered. Both touch only the member '' of queued, which never
-- exists (an id is 1 to 200 bytes), and change nothing.
-- refuse_when_full(): a deny-oom write (ZADD XX of that member). For what grows memory:
--   enqueue, ingest, claim. Over the limit the script ends here: QueueFull, nothing written.
local function refuse_when_full() redis.call('ZADD', K_QUEUED, 'XX', 0, '') end
-- run_when_full(): a write that is not deny-oom (ZREM of that member). For what must work at
--   the limit: what frees memory (the sweep's retention, acks, purges) and what keeps work
--   already out going or changes only what is there (heartbeats, renewals, fail, release,
--   the leader lease and its health report...). The script then runs whole over the limit.
local function run_when_full() redis.call('ZREM', K_QUEUED, '') end

local function now_ms()
  local a = ARGV[1]
  if a ~= nil and a ~= '' then return tonumber(a) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function stat(name, n)
  if n == nil then n = 1 end
  if n ~= 0 then redis.call('HINCRBY', K_STATS, name, n) end
end

-- Wake up to n blocked claimers (one token each).
local function signal(n)
  if n <= 0 then return end
  if n > 64 then n = 64 end
  local tokens = {}
  for i = 1, n do tokens[i] = '1' end
  redis.call('LPUSH', K_SIGNAL, unpack(tokens))
  redis.call('LTRIM', K_SIGNAL, 0, SIGNAL_CAP - 1)
end

local function qscore(pri, seq) return (9 - tonumber(pri)) * PRI_SPAN + tonumber(seq) end

-- Put an existing item back in queued, at its original FIFO place within its priority.
local function to_queued(id, key)
  local f = redis.call('HMGET', key, 'pri', 'seq')
  redis.call('ZADD', K_QUEUED, qscore(f[1], f[2]), id)
  redis.call('HSET', key, 'state', 'queued')
end

-- The end of an item, told to whoever enqueued it: an entry on the outcomes stream (read
-- with XREAD, or a consumer group for at-least-once), with the item's id, uri, revision,
-- attempts and meta, and `fields` (state done and its result, or dead, class and reason).
-- Capped at about OUTCOMES_CAP entries (MAXLEN ~: whole stream nodes are trimmed).
local function outcome(id, key, now, fields)
  local f = redis.call('HMGET', key, 'uri', 'rev', 'attempts', 'meta')
  local args = {'XADD', K_OUTCOMES, 'MAXLEN', '~', OUTCOMES_CAP, '*', 'id', id,
                'uri', f[1] or '', 'at', now, 'rev', f[2] or '0', 'attempts', f[3] or '0'}
  if f[4] then args[#args + 1] = 'meta'; args[#args + 1] = f[4] end
  for _, v in ipairs(fields) do args[#args + 1] = v end
  redis.call(unpack(args))
end

-- Dead with its reason and a short class (see framefleet/workers/errors.py), also indexed
-- by class (deadc:<cls>, dead_classes), so that groups and bulk actions by class cost
-- O(classes) and O(that class), not O(dead letters).
local function to_dead(id, key, now, reason, cls)
  if cls == nil or cls == '' then cls = 'unknown' end
  redis.call('ZADD', K_DEAD, now, id)
  redis.call('ZADD', dkey(cls), now, id)
  redis.call('SADD', K_DEAD_CLASSES, cls)
  redis.call('HSET', key, 'state', 'dead', 'dead_reason', reason, 'dead_class', cls,
             'dead_at', now)
  stat('dead_total')
  outcome(id, key, now, {'state', 'dead', 'class', cls, 'reason', reason})
  event(id, now, 'dead', cls .. ': ' .. reason)
end

-- A dead letter leaves the dead (retried, purged, re-enqueued with force, trimmed): out of
-- the dead zset and its class index, before its hash changes. False if it was not dead.
local function leave_dead(id, key)
  if redis.call('ZREM', K_DEAD, id) == 0 then return false end
  local cls = redis.call('HGET', key, 'dead_class') or 'unknown'
  if redis.call('ZREM', dkey(cls), id) == 1 and redis.call('EXISTS', dkey(cls)) == 0 then
    redis.call('SREM', K_DEAD_CLASSES, cls)
  end
  return true
end

-- One observation in histogram `name`: `ms` counted in the first bucket whose bound (ms,
-- BUCKETS, generated from framefleet/queue/metrics.py) is at least ms, 'inf' past them all;
-- with the sum (ms) and the count. Fields of hash hist:<name>: bucket numbers from 1.
local function observe(name, ms)
  ms = math.max(0, math.floor(ms))
  local bucket = 'inf'
  for i, bound in ipairs(BUCKETS[string.match(name, '^[^:]+')]) do
    if ms <= bound then bucket = tostring(i); break end
  end
  local key = P .. 'hist:' .. name
  redis.call('HINCRBY', key, bucket, 1)
  redis.call('HINCRBY', key, 'sum', ms)
  redis.call('HINCRBY', key, 'count', 1)
end

-- The lease of `id` by `owner` ended: out of the owner's index (and its solo slot).
local function unhold(owner, id)
  if not owner then return end
  local held = hkey(owner)
  redis.call('SREM', held, id)
  if redis.call('SCARD', held) == 0 then redis.call('SREM', K_HOLDERS, owner) end
  if redis.call('HGET', K_SOLO, owner) == id then redis.call('HDEL', K_SOLO, owner) end
end

local function drop_lease(id, key)
  redis.call('ZREM', K_LEASED, id)
  unhold(redis.call('HGET', key, 'owner'), id)
  redis.call('HDEL', key, 'owner', 'lease_until')
end

-- A lease ended without its holder's word (it expired, or its worker was found dead). How
-- much of it is the item's fault decides what happens (see sweep.lua):
-- 'charge': a delivery counted, the poison count. It starts again at 1 when the item's
-- chunks advanced since the last lapse (it is not crashing at the same place); at
-- max_deliveries the item is dead as poison. It is retried alone from then on.
-- 'suspect': its worker failed while holding others too, so the blame is not known: no
-- delivery, but from now on it is retried alone, so that the next failure is exact.
-- 'amnesty': a fleet-wide event (driver gone, node lost): no delivery.
-- Returns true when the item went dead.
local function lapse(id, key, now, blame, max_deliveries, reason)
  drop_lease(id, key)
  local f = redis.call('HMGET', key, 'deliveries', 'crash_mark', 'chunks_done', 'solo')
  local done = tonumber(f[3]) or 0
  redis.call('HINCRBY', key, 'interrupted', 1)
  if blame == 'amnesty' then
    redis.call('HSET', key, 'release_reason', reason)
    event(id, now, 'given back', reason .. ' (not charged)')
    to_queued(id, key)
    return false
  end
  redis.call('HSET', key, 'crash_mark', done)
  if f[4] ~= '1' then redis.call('HSET', key, 'solo', '1', 'solo_since', now) end
  if blame == 'suspect' then
    event(id, now, 'lease lost', 'its worker went silent, or failed with its other leases:'
          .. ' a suspect, retried alone, not charged')
    to_queued(id, key)
    return false
  end
  local d = (tonumber(f[1]) or 0) + 1
  if f[2] and done > tonumber(f[2]) then d = 1 end
  redis.call('HSET', key, 'deliveries', d)
  event(id, now, 'lease lost', 'its lease ran out, the blame its own (delivery ' .. d ..
        ' of ' .. max_deliveries .. ', at ' .. done .. ' chunks done)')
  if d >= max_deliveries then
    to_dead(id, key, now, 'poison: its lease lapsed ' .. d .. ' times in a row without ack or' ..
            ' fail, at ' .. done .. ' chunks done, the blame its own each time (its worker' ..
            ' crashed or stalled holding nothing else, or renewed its other leases)', 'poison')
    return true
  end
  to_queued(id, key)
  return false
end

-- The fence of every lease-holder operation: the item must exist, be leased to this owner
-- under this token. A token is unique to one claim (claim.lua: a random nonce from the
-- claimer and the item's place in that claim), so it is never handed out twice, even after
-- the server lost its last writes (a crash with everysec, a failover to a replica, a restore)
-- and its counters went back. Returns nil while the caller holds the lease, else a refusal,
-- counted in `counter`:
-- {'stale', state}: another lease was handed out since (the token or owner differs);
-- {'lost', state}: same token but no longer leased (reaped, or already acked/failed/released);
-- {'missing', ''}: no such item (purged).
-- An item already in `dup_state` under this very token answers {'duplicate', state} instead:
-- the caller's own earlier call went through (a retried ack after a dropped reply).
-- While the lease holds, the second result is {state, token, chunks_done}.
local function fence(key, token, owner, counter, dup_state)
  local f = redis.call('HMGET', key, 'state', 'token', 'chunks_done', 'owner')
  if not f[1] then
    stat(counter); return {'missing', ''}
  end
  if f[2] ~= token or (f[1] == 'leased' and f[4] ~= owner) then
    stat(counter); return {'stale', f[1]}
  end
  if f[1] == 'leased' then return nil, f end
  if f[1] == dup_state then return {'duplicate', f[1]} end
  stat(counter); return {'lost', f[1]}
end

-- Move delayed items whose time has come into queued. Returns how many moved.
local function promote_due(now, limit)
  local due = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    redis.call('ZREM', K_DELAYED, id)
    local key = ikey(id)
    redis.call('HDEL', key, 'ready_at')
    to_queued(id, key)
  end
  return #due
end

-- Write one validated item's hash. Returns its queued score when it was (re)created, nil
-- when the id already existed; the caller adds it to K_QUEUED (in bulk, see zadd_bulk).
-- A done or dead item is re-created from scratch only when force is true, as the next
-- revision (rev): its outputs go to a new version, superseding the old ones. So is one
-- forced after retention or a purge deleted it. The newest revision of a forced id is kept
-- in K_REVS, which retention and purges leave: an id enqueued again after its hash is gone
-- gets it back, so that no superseded output ever answers for it.
local function enqueue_one(now, seq, id, uri, pri, etag, size, meta, force)
  local key = ikey(id)
  local f = redis.call('HMGET', key, 'state', 'rev')
  local state = f[1]
  local rev = tonumber(f[2]) or tonumber(redis.call('HGET', K_REVS, id) or '') or 0
  if state then
    if not force or (state ~= 'done' and state ~= 'dead') then return nil end
    redis.call('ZREM', K_DONE, id)
    leave_dead(id, key)
    redis.call('DEL', key, ckey(id))
  end
  if force then
    rev = rev + 1
    redis.call('HSET', K_REVS, id, rev)
    if state then event(id, now, 'enqueued again', 'revision ' .. rev .. ' (forced)') end
  end
  if rev > 0 then redis.call('HSET', key, 'rev', rev) end
  if etag == '' and size == '' and meta == '' then
    redis.call('HSET', key, 'uri', uri, 'pri', pri, 'seq', seq, 'state', 'queued', 'created', now)
  else
    redis.call('HSET', key, 'uri', uri, 'pri', pri, 'seq', seq, 'state', 'queued', 'created', now,
               'etag', etag, 'size', size, 'meta', meta)
  end
  return qscore(pri, seq)
end

-- redis.call(cmd, [key,] list...) in slices of 800 arguments (Lua's unpack limit is ~8000);
-- 800 is even, so ZADD score/member pairs stay whole.
local function bulk(cmd, key, list)
  for i = 1, #list, 800 do
    local j = math.min(i + 799, #list)
    if key then
      redis.call(cmd, key, unpack(list, i, j))
    else
      redis.call(cmd, unpack(list, i, j))
    end
  end
end

-- unhold() for many leases at once: by_owner maps each owner to the ids it no longer holds
-- (a batch of acks mostly has one owner: a few calls, not three an item).
local function unhold_many(by_owner)
  for owner, ids in pairs(by_owner) do
    local held = hkey(owner)
    bulk('SREM', held, ids)
    if redis.call('SCARD', held) == 0 then redis.call('SREM', K_HOLDERS, owner) end
    local solo = redis.call('HGET', K_SOLO, owner)
    if solo then
      for _, id in ipairs(ids) do
        if id == solo then redis.call('HDEL', K_SOLO, owner); break end
      end
    end
  end
end

-- Reserve n FIFO sequence numbers; returns the first.
local function reserve_seq(n)
  local last = redis.call('HINCRBY', K_META, 'seq', n)
  return last - n + 1
end

-- The dead letters an admin script acts on: ARGV[3..] when given, else the oldest ARGV[2].
local function dead_ids_from_argv()
  if #ARGV > 2 then
    local ids = {}
    for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
    return ids
  end
  return redis.call('ZRANGE', K_DEAD, 0, tonumber(ARGV[2]) - 1)
end
