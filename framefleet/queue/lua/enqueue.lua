-- enqueue.lua: add a batch of validated items, idempotent by id.
-- KEYS[1] prefix. ARGV: now, force (0|1), then 6 per item: id, uri, pri, etag, size, meta
-- ('' = absent). Writes item hashes, queued, meta.seq, stats.enqueued_total, signal.
-- Returns the 1-based positions (within the batch) of the items that were (re)queued.
-- Over maxmemory: refused before any write (refuse_when_full: QueueFull).
refuse_when_full()
local now = now_ms()
local force = ARGV[2] == '1'
local n = (#ARGV - 2) / 6
local seq = reserve_seq(n)
local added, zargs = {}, {}
for i = 0, n - 1 do
  local a = 3 + i * 6
  local score = enqueue_one(now, seq + i, ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
                            ARGV[a + 4], ARGV[a + 5], force)
  if score then
    added[#added + 1] = i + 1
    zargs[#zargs + 1] = score
    zargs[#zargs + 1] = ARGV[a]
  end
end
bulk('ZADD', K_QUEUED, zargs)
stat('enqueued_total', #added)
signal(#added)
return added
