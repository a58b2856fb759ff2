-- claim.lua: lease up to n items, highest priority first, FIFO within a priority.
-- KEYS[1] prefix. ARGV: now, n, worker, lease_ms, nonce (random, new for every call).
-- Reads meta.paused; moves due delayed items to queued; pops queued; per item: a new epoch
-- (from meta.epoch: a counter, for display), a token (the fence: nonce '.' place in this
-- claim, so unique even when the server has lost writes and meta.epoch went back), state
-- leased, owner, lease_until, claimed_at, claims+1, leased zset.
-- Returns {now, paused (0|1), next_due_ms (-1 if none), inbox length, items}, where items is
-- flat, 13 values per item: id, epoch, token, lease_until, uri, etag, size, meta, pri,
-- attempts, deliveries, chunks_total, checkpointed chunk indices joined by ','.
local now = now_ms()
local n = tonumber(ARGV[2])
local worker = ARGV[3]
local lease_ms = tonumber(ARGV[4])
local nonce = ARGV[5]

local function next_due()
  local d = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
  if d[2] then return d[2] end
  return -1
end

if redis.call('HGET', K_META, 'paused') == '1' then
  return {now, 1, next_due(), redis.call('LLEN', K_INBOX), {}}
end
promote_due(now, 1000)
local out, leased = {}, {}
local popped = redis.call('ZPOPMIN', K_QUEUED, n)
local count = #popped / 2
local deadline = now + lease_ms
if count > 0 then
  local epoch = redis.call('HINCRBY', K_META, 'epoch', count) - count
  for i = 1, #popped, 2 do
    local id = popped[i]
    local key = ikey(id)
    epoch = epoch + 1
    local token = nonce .. '.' .. string.format('%d', (i + 1) / 2)
    local f = redis.call('HMGET', key, 'uri', 'etag', 'size', 'meta', 'pri', 'attempts',
                         'deliveries', 'chunks_total', 'claims', 'chunks_done')
    redis.call('HSET', key, 'state', 'leased', 'epoch', epoch, 'token', token, 'owner', worker,
               'lease_until', deadline, 'claimed_at', now, 'claims', (tonumber(f[9]) or 0) + 1)
    leased[#leased + 1] = deadline
    leased[#leased + 1] = id
    local chunks = ''
    if f[10] and f[10] ~= '0' then
      chunks = table.concat(redis.call('SMEMBERS', ckey(id)), ',')
    end
    local o = #out
    out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = id, epoch, token, deadline, f[1]
    out[o + 6], out[o + 7], out[o + 8], out[o + 9] = f[2] or '', f[3] or '', f[4] or '', f[5]
    out[o + 10], out[o + 11], out[o + 12], out[o + 13] = f[6] or '0', f[7] or '0', f[8] or '', chunks
  end
  bulk('ZADD', K_LEASED, leased)
end
stat('claimed_total', count)
if redis.call('ZCARD', K_QUEUED) == 0 then
  -- Nothing left to hand out: any token still queued would only cause an empty wake-up.
  redis.call('DEL', K_SIGNAL)
end
return {now, 0, next_due(), redis.call('LLEN', K_INBOX), out}
