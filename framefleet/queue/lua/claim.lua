-- claim.lua: lease up to n items, highest priority first, FIFO within a priority.
-- KEYS[1] prefix. ARGV: now, n, worker, lease_ms, nonce (random, new for every call).
-- Reads meta.paused; moves due delayed items to queued; pops queued; per item: a new epoch
-- (from meta.epoch: a counter, for display), a token (the fence: nonce '.' place in this
-- claim, so unique even when the server has lost writes and meta.epoch went back), state
-- leased, owner, lease_until, claimed_at, claims+1, leased zset, the worker's index
-- (held:<worker>, holders) and nonces[worker] = nonce; at an item's first claim, its wait
-- since enqueue in hist:queue_wait.
-- A suspect item (solo: it crashed a worker that held others too) is handed out only as the
-- only item of a claim, and its worker gets nothing more until that lease ends (solo[worker]);
-- a worker that holds other leases passes over it for lease_ms after it became suspect (an
-- idle worker takes it first), then takes it too and must finish its others before starting
-- it (the lease says solo). Items passed over keep their place.
-- The same nonce again from the same worker is a retry of a call whose reply was lost: it
-- answers the items that call leased, leasing nothing more.
-- A retired worker (release_workers.lua: its fleet ended, its node was lost) is refused with
-- the error 'RETIRED <worker>': it may still run, but it must lease nothing more.
-- Over maxmemory a claim is refused before any write (refuse_when_full: QueueFull).
-- Returns {now, paused (0|1), next_due_ms (-1 if none), inbox length, items}, where items is
-- flat, 15 values per item: id, epoch, token, lease_until, uri, etag, size, meta, pri,
-- attempts, deliveries, chunks_total, checkpointed chunk indices joined by ',', solo (0|1),
-- rev (the item's revision: enqueues with force).
local now = now_ms()
local n = tonumber(ARGV[2])
local worker = ARGV[3]
local lease_ms = tonumber(ARGV[4])
local nonce = ARGV[5]
local held = hkey(worker)
local SKIP_MAX = 100 -- suspect items a busy worker passes over in one call, at most
if retired(worker) then
  return redis.error_reply('RETIRED ' .. worker .. ': its fleet ended or its node was lost')
end

local function next_due()
  local d = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
  if d[2] then return d[2] end
  return -1
end

local function reply(paused, items)
  return {now, paused, next_due(), redis.call('LLEN', K_INBOX), items}
end

-- What a lease needs of its item, read once (as it is popped, or on a replay).
local FIELDS = {'solo', 'solo_since', 'uri', 'etag', 'size', 'meta', 'pri', 'attempts',
                'deliveries', 'chunks_total', 'chunks_done', 'rev', 'claims', 'created', 'pin'}

-- Append one leased item's 16 reply values to out; f holds its FIELDS.
local function row(out, id, epoch, token, lease_until, f)
  local chunks = ''
  if f[11] and f[11] ~= '0' then chunks = table.concat(redis.call('SMEMBERS', ckey(id)), ',') end
  local o = #out
  out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = id, epoch, token, lease_until, f[3]
  out[o + 6], out[o + 7], out[o + 8], out[o + 9] = f[4] or '', f[5] or '', f[6] or '', f[7]
  out[o + 10], out[o + 11], out[o + 12], out[o + 13] = f[8] or '0', f[9] or '0', f[10] or '', chunks
  out[o + 14], out[o + 15], out[o + 16] = f[1] or '0', f[12] or '0', f[15] or ''
end

if redis.call('HGET', K_NONCES, worker) == nonce then
  local out = {}
  local prefix = nonce .. '.'
  for _, id in ipairs(redis.call('SMEMBERS', held)) do
    local key = ikey(id)
    local e = redis.call('HMGET', key, 'epoch', 'token', 'lease_until')
    if e[2] and string.sub(e[2], 1, #prefix) == prefix then
      row(out, id, e[1], e[2], e[3], redis.call('HMGET', key, unpack(FIELDS)))
    end
  end
  return reply(0, out)
end
if redis.call('HGET', K_META, 'paused') == '1' then return reply(1, {}) end
refuse_when_full() -- over maxmemory: no new lease (QueueFull); a replay above still answers
promote_due(now, 1000)
if redis.call('HEXISTS', K_SOLO, worker) == 1 then return reply(0, {}) end

local busy = redis.call('EXISTS', held) == 1
local fields = {} -- id -> its FIELDS, read as it is popped (its reply is built from them)
local take, back = {}, {}
local solo = nil
local skipped = 0
while #take < n and not solo do
  local popped = redis.call('ZPOPMIN', K_QUEUED, n - #take)
  if #popped == 0 then break end
  for i = 1, #popped, 2 do
    local id, score = popped[i], popped[i + 1]
    if solo then
      back[#back + 1], back[#back + 2] = score, id
    else
      local f = redis.call('HMGET', ikey(id), unpack(FIELDS))
      if f[1] ~= '1' then
        take[#take + 1] = id
        fields[id] = f
      elseif #take == 0 and (not busy or now - (tonumber(f[2]) or 0) >= lease_ms) then
        solo = id
        take[1] = id
        fields[id] = f
      else
        back[#back + 1], back[#back + 2] = score, id
        skipped = skipped + 1
      end
    end
  end
  if skipped >= SKIP_MAX then break end
end
if #back > 0 then bulk('ZADD', K_QUEUED, back) end

local out, leased = {}, {}
local count = #take
local deadline = now + lease_ms
if count > 0 then
  local epoch = redis.call('HINCRBY', K_META, 'epoch', count) - count
  for k, id in ipairs(take) do
    local f, token = fields[id], nonce .. '.' .. k
    redis.call('HSET', ikey(id), 'state', 'leased', 'epoch', epoch + k, 'token', token,
               'owner', worker, 'lease_until', deadline, 'claimed_at', now,
               'claims', (tonumber(f[13]) or 0) + 1)
    if not f[13] and f[14] then observe('queue_wait', now - tonumber(f[14])) end -- 1st claim
    event(id, now, 'claimed', 'by ' .. worker .. ' (claim ' .. ((tonumber(f[13]) or 0) + 1) .. ')')
    leased[#leased + 1] = deadline
    leased[#leased + 1] = id
    row(out, id, epoch + k, token, deadline, f)
  end
  bulk('ZADD', K_LEASED, leased)
  bulk('SADD', held, take)
  redis.call('SADD', K_HOLDERS, worker)
  redis.call('HSET', K_NONCES, worker, nonce)
  if solo then redis.call('HSET', K_SOLO, worker, solo) end
end
stat('claimed_total', count)
if redis.call('ZCARD', K_QUEUED) == 0 then
  -- Nothing left to hand out: any token still queued would only cause an empty wake-up.
  redis.call('DEL', K_SIGNAL)
end
return reply(0, out)
