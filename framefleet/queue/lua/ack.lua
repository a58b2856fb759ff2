-- ack.lua: mark leased items done, each fenced by its token and owner (one item or a batch).
-- KEYS[1] prefix. ARGV: now, then per item: id, token, owner, result (a URI or ''), stages
-- ('' or the video's ms in fetch, decode, infer and write, joined by ',').
-- Per accepted item: state done, result, done_at, lease_until cleared (owner stays: who
-- finished it); out of leased (and its worker's index), into done; its chunk set dropped;
-- stats.acked_total, meta.last_done_at; its times in hist:processing (claim to ack),
-- hist:latency (enqueue to ack) and hist:stage:<stage>; an entry on the outcomes stream. A
-- stale token is refused and counted (stale_ack_total); the same lease acking twice answers
-- 'duplicate' (a retry after a lost reply), with no second outcome.
-- Returns one verdict per item: 'ok' | 'duplicate' | 'stale' | 'lost' | 'missing'.
-- Runs over maxmemory too (run_when_full in _common.lua): it frees memory (the chunk set) and
-- finishes work already out.
run_when_full()
local now = now_ms()
local out, acked, done, chunk_keys, by_owner = {}, {}, {}, {}, {}
local STAGES = {'fetch', 'decode', 'infer', 'write'}
for a = 2, #ARGV, 5 do
  local id = ARGV[a]
  local key = ikey(id)
  local refused, f = fence(key, ARGV[a + 1], ARGV[a + 2], 'stale_ack_total', 'done')
  if refused then
    out[#out + 1] = refused[1]
  else
    local t = redis.call('HMGET', key, 'claimed_at', 'created', 'claims', 'attempts',
                         'interrupted', 'bugs', 'infra_releases')
    if t[3] == '1' and not t[4] and not t[5] and not t[6] and not t[7] then
      redis.call('DEL', ekey(id)) -- done at its first claim: nothing to tell
    else
      event(id, now, 'done', 'by ' .. (f[4] or '?'))
    end
    if t[1] then observe('processing', now - tonumber(t[1])) end
    if t[2] then observe('latency', now - tonumber(t[2])) end
    local k = 0
    for ms in string.gmatch(ARGV[a + 4], '[^,]+') do
      k = k + 1
      if STAGES[k] then observe('stage:' .. STAGES[k], tonumber(ms)) end
    end
    -- owner stays: the worker that finished it
    redis.call('HSET', key, 'state', 'done', 'result', ARGV[a + 3], 'done_at', now,
               'lease_until', '')
    outcome(id, key, now, {'state', 'done', 'result', ARGV[a + 3]})
    if f[4] then
      local ids = by_owner[f[4]]
      if not ids then ids = {}; by_owner[f[4]] = ids end
      ids[#ids + 1] = id
    end
    acked[#acked + 1] = id
    done[#done + 1] = now
    done[#done + 1] = id
    if f[3] and f[3] ~= '0' then chunk_keys[#chunk_keys + 1] = ckey(id) end
    out[#out + 1] = 'ok'
  end
end
if #acked > 0 then
  bulk('ZREM', K_LEASED, acked)
  unhold_many(by_owner)
  bulk('ZADD', K_DONE, done)
  bulk('DEL', nil, chunk_keys)
  stat('acked_total', #acked)
  redis.call('HSET', K_META, 'last_done_at', now)
end
return out
