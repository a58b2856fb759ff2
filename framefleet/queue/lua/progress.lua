-- progress.lua: checkpoint finished chunks (one or several at once), fenced by the lease's
-- token and owner.
-- KEYS[1] prefix. ARGV: now, id, token, owner, chunks total ('' = unknown), chunks expected
-- ('' = unsaid: the container's estimate, for progress bars only), the pin ('' = unsaid:
-- what the chunks were made from, the source's ETag, digest or file stat), then five values
-- a chunk: its index and its work: frames ('' = not said), decode ms, inference ms (model
-- and write), the inference device. Writes the item's chunk set, chunks_done, chunks_total,
-- pin; the first time a chunk is checkpointed, its work: stats.frames_total, busy.decode,
-- busy.inference:<device>. A pin other than the one kept drops the chunk set first: those
-- chunks were made from another object at the same URI.
-- Returns {'ok', chunks_done} or a refusal from fence() (counted in stale_progress_total).
-- Over maxmemory it runs whole (run_when_full): work already out must still be kept.
run_when_full()
local id, token, owner = ARGV[2], ARGV[3], ARGV[4]
local key = ikey(id)
local refused = fence(key, token, owner, 'stale_progress_total', nil)
if refused then return refused end
local pin = ARGV[7]
if pin ~= '' then
  local kept = redis.call('HGET', key, 'pin')
  if kept ~= pin then
    if kept then
      redis.call('DEL', ckey(id))
      redis.call('HDEL', key, 'chunks_done', 'chunks_total', 'chunks_expected')
    end
    redis.call('HSET', key, 'pin', pin)
  end
end
local added, frames = 0, 0
for i = 8, #ARGV, 5 do
  if redis.call('SADD', ckey(id), ARGV[i]) == 1 then
    added = added + 1
    if ARGV[i + 1] ~= '' then
      frames = frames + tonumber(ARGV[i + 1])
      redis.call('HINCRBY', K_BUSY, 'decode', tonumber(ARGV[i + 2]))
      redis.call('HINCRBY', K_BUSY, 'inference:' .. ARGV[i + 4], tonumber(ARGV[i + 3]))
    end
  end
end
local done
if added > 0 then
  done = redis.call('HINCRBY', key, 'chunks_done', added)
  stat('frames_total', frames)
else
  done = tonumber(redis.call('HGET', key, 'chunks_done') or '0')
end
if ARGV[5] ~= '' then redis.call('HSET', key, 'chunks_total', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', key, 'chunks_expected', ARGV[6]) end
return {'ok', done}
