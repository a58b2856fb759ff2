-- ingest.lua: move entries that plain Redis clients pushed to the inbox into the queue.
-- KEYS[1] prefix. ARGV: now, limit, config_version.
-- Each entry is popped (RPOP, oldest first) and, in the same script, either enqueued like
-- enqueue.lua (idempotent by id) or pushed to the rejected list with its reason, so none is
-- lost and a malformed one never stops the queue. The rules match
-- framefleet/queue/model.py:parse_inbox_entry (a test checks that they agree):
--   a JSON object of at most 4096 bytes, UTF-8, with fields
--   uri (required): s3://bucket/key | http(s)://host... | file:///path | /absolute/path,
--        at most 1024 bytes, no control characters;
--   id: 1..200 bytes, no spaces or control characters (default: sha1(config_version "\n" uri),
--        first 24 hex digits);
--   priority: 0..9 or low|normal|high (default 5); etag: a string of at most 256 bytes;
--   size: an integer >= 0; meta: an object of scalars, at most 512 bytes as JSON.
-- Writes: inbox, rejected (capped), the queue keys enqueue.lua writes, stats.inbox_*_total.
-- Returns {ingested, rejected, duplicates (valid, id already known), remaining inbox length}.
-- Over maxmemory: refused before an entry is popped (refuse_when_full: QueueFull), so none is
-- popped and then lost; an empty inbox answers without writing, full or not.
if redis.call('LLEN', K_INBOX) == 0 then return {0, 0, 0, 0} end
refuse_when_full()
local now = now_ms()
local limit = tonumber(ARGV[2])
local config_version = ARGV[3]
local MAX_RAW, MAX_URI, MAX_ID, MAX_ETAG, MAX_META = 4096, 1024, 200, 256, 512
local NAMES = {low = 0, normal = 5, high = 9}
local FIELDS = {uri = true, id = true, priority = true, etag = true, size = true, meta = true}

local function valid_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    if c < 0x80 then
      i = i + 1
    elseif c >= 0xC2 and c <= 0xDF then
      local c2 = s:byte(i + 1)
      if not c2 or c2 < 0x80 or c2 > 0xBF then return false end
      i = i + 2
    elseif c >= 0xE0 and c <= 0xEF then
      local c2, c3 = s:byte(i + 1, i + 2)
      if not c3 then return false end
      local lo, hi = 0x80, 0xBF
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
      if c2 < lo or c2 > hi or c3 < 0x80 or c3 > 0xBF then return false end
      i = i + 3
    elseif c >= 0xF0 and c <= 0xF4 then
      local c2, c3, c4 = s:byte(i + 1, i + 3)
      if not c4 then return false end
      local lo, hi = 0x80, 0xBF
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
      if c2 < lo or c2 > hi or c3 < 0x80 or c3 > 0xBF or c4 < 0x80 or c4 > 0xBF then
        return false
      end
      i = i + 4
    else
      return false
    end
  end
  return true
end

-- Control characters (and, with no_space, the space) are refused.
local function has_ctrl(s, no_space)
  local lowest = 32
  if no_space then lowest = 33 end
  for i = 1, #s do
    local c = s:byte(i)
    if c < lowest or c == 127 then return true end
  end
  return false
end

local function text(v, name, max, no_space)
  if type(v) ~= 'string' then return nil, name .. ' must be a string' end
  if #v == 0 then return nil, name .. ' is empty' end
  if #v > max then return nil, name .. ' is longer than ' .. max .. ' bytes' end
  if not valid_utf8(v) then return nil, name .. ' is not valid UTF-8' end
  if has_ctrl(v, no_space) then return nil, name .. ' contains a control character or space' end
  return v
end

local function absent(v) return v == nil or v == cjson.null end

-- An id goes into URL paths, where clients resolve `.` and `..` segments (model.check_id).
local function dot_segment(id)
  for seg in (id .. '/'):gmatch('([^/]*)/') do
    if seg == '.' or seg == '..' then return true end
  end
  return false
end

-- cjson reads NaN and Infinity (Python's json.dumps writes them) but cannot write them back.
local function is_finite(v) return v == v and v ~= math.huge and v ~= -math.huge end

local function is_int(v) return type(v) == 'number' and is_finite(v) and math.floor(v) == v end

-- meta is stored re-encoded the way Python's json.dumps(meta, separators=(',', ':'),
-- ensure_ascii=False) writes it (model.py:_check_meta), and its size measured on that, so
-- that the limit is the same on both sides. Not cjson.encode: it escapes '/' and DEL (an
-- entry whose meta holds paths was measured up to twice its size) and writes numbers with
-- 14 significant digits (29.97002997002997 fps became 29.97002997003, 123456789012345
-- became 1.2345678901234e+14). Numbers are doubles in Lua, as in any JSON reader: an
-- integer beyond 2^53 keeps only its nearest double, and an integral float (2.0) is
-- written as an integer (2), two bytes shorter than Python writes it.
local JSON_ESCAPES = {['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
                      ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t'}
local function json_string(s)
  local escaped = string.gsub(s, '[%z\1-\31"\\]', function(c)
    return JSON_ESCAPES[c] or string.format('\\u%04x', string.byte(c))
  end)
  return '"' .. escaped .. '"'
end

local function json_number(v)
  if math.floor(v) == v and v > -9007199254740992 and v < 9007199254740992 then
    return string.format('%d', v)
  end
  for digits = 1, 16 do -- the shortest form that reads back as the same double
    local s = string.format('%.' .. digits .. 'g', v)
    if tonumber(s) == v then return s end
  end
  return string.format('%.17g', v)
end

local function json_scalar(v)
  if type(v) == 'string' then return json_string(v) end
  if type(v) == 'number' then return json_number(v) end
  if type(v) == 'boolean' then return tostring(v) end
  return 'null' -- cjson.null
end

local function parse(raw)
  if #raw > MAX_RAW then return nil, 'entry is longer than ' .. MAX_RAW .. ' bytes' end
  if not valid_utf8(raw) then return nil, 'entry is not valid UTF-8' end
  local ok, e = pcall(cjson.decode, raw)
  if not ok then return nil, 'entry is not valid JSON' end
  if type(e) ~= 'table' then return nil, 'entry must be a JSON object' end
  for k, _ in pairs(e) do
    if type(k) ~= 'string' then return nil, 'entry must be a JSON object' end
    if not FIELDS[k] then return nil, 'unknown field ' .. k end
  end
  if absent(e.uri) then return nil, 'uri is required' end
  local uri, err = text(e.uri, 'uri', MAX_URI, false)
  if not uri then return nil, err end
  if not (uri:match('^s3://[^/]+/.') or uri:match('^https?://[^/]') or uri:match('^file:///.')
          or uri:match('^/.')) then
    return nil, 'uri must be s3://bucket/key, http(s)://host/path, file:///path or an absolute path'
  end
  local item = {uri = uri, pri = '5', etag = '', size = '', meta = ''}
  if absent(e.id) then
    item.id = string.sub(redis.sha1hex(config_version .. '\n' .. uri), 1, 24)
  else
    item.id, err = text(e.id, 'id', MAX_ID, true)
    if not item.id then return nil, err end
    if dot_segment(item.id) then
      return nil, "id has a '.' or '..' segment: URLs would resolve it"
    end
  end
  if not absent(e.priority) then
    local p = e.priority
    if type(p) == 'string' and NAMES[p] then
      p = NAMES[p]
    elseif not (is_int(p) and p >= 0 and p <= 9) then
      return nil, 'priority must be an integer 0..9 or low|normal|high'
    end
    item.pri = string.format('%d', p)
  end
  if not absent(e.etag) then
    item.etag, err = text(e.etag, 'etag', MAX_ETAG, false)
    if not item.etag then return nil, err end
  end
  if not absent(e.size) then
    if not (is_int(e.size) and e.size >= 0 and e.size < 9007199254740992) then
      return nil, 'size must be an integer >= 0'
    end
    item.size = string.format('%d', e.size)
  end
  if not absent(e.meta) then
    if type(e.meta) ~= 'table' then return nil, 'meta must be a JSON object' end
    local parts = {}
    for k, v in pairs(e.meta) do
      if type(k) ~= 'string' then return nil, 'meta must be a JSON object' end
      if type(v) == 'table' then return nil, 'meta values must be strings, numbers, booleans or null' end
      if type(v) == 'number' and not is_finite(v) then return nil, 'meta numbers must be finite' end
      parts[#parts + 1] = json_string(k) .. ':' .. json_scalar(v)
    end
    if #parts > 0 then
      item.meta = '{' .. table.concat(parts, ',') .. '}'
      if #item.meta > MAX_META then return nil, 'meta is longer than ' .. MAX_META .. ' bytes as JSON' end
    end
  end
  return item
end

-- The newest REJECTED_CAP rejections are kept (framefleet/queue/model.py has the same
-- number), each with the entry as it came when it could have been valid (text, at most
-- MAX_RAW bytes), else its first KiB as hex with its length: a few MB in all at most.
local REJECTED_CAP = 1000
local function reject(raw, reason)
  local entry = {reason = reason, at = now}
  if #raw <= MAX_RAW and valid_utf8(raw) then
    entry.raw = raw
  else
    entry.raw_hex = string.gsub(string.sub(raw, 1, 1024), '.', function(c)
      return string.format('%02x', string.byte(c))
    end)
    entry.raw_bytes = #raw
  end
  redis.call('LPUSH', K_REJECTED, cjson.encode(entry))
end

-- parse() only reads; run under pcall, so that an entry it did not foresee is rejected with
-- the error instead of ending the script (Redis does not roll a failed script back: the
-- entry, already popped, would be lost with the counters of those before it).
local function checked(raw)
  local ok, item, reason = pcall(parse, raw)
  if ok then return item, reason end
  return nil, 'entry could not be read: ' .. tostring(item)
end

local ingested, rejected, duplicates = 0, 0, 0
for _ = 1, limit do
  local raw = redis.call('RPOP', K_INBOX)
  if not raw then break end
  local item, reason = checked(raw)
  if item then
    local score = enqueue_one(now, reserve_seq(1), item.id, item.uri, item.pri, item.etag,
                              item.size, item.meta, false)
    if score then
      redis.call('ZADD', K_QUEUED, score, item.id)
      ingested = ingested + 1
    else
      duplicates = duplicates + 1
    end
  else
    reject(raw, reason)
    rejected = rejected + 1
  end
end
if rejected > 0 then redis.call('LTRIM', K_REJECTED, 0, REJECTED_CAP - 1) end
stat('inbox_ingested_total', ingested)
stat('enqueued_total', ingested)
stat('inbox_rejected_total', rejected)
stat('inbox_duplicate_total', duplicates)
signal(ingested)
return {ingested, rejected, duplicates, redis.call('LLEN', K_INBOX)}
