-- webhook.lua: the end of one webhook attempt for an outcome (framefleet/ops/webhooks.py),
-- recorded in one step with the consumer group's acknowledgement.
-- KEYS[1] prefix. ARGV: now, group, entry (the outcome's stream id), result, failure.
--   result: 'sent' (a 2xx answer), 'skip' (no URL for it), 'retry' (failed, to be tried
--   again: it stays pending), 'gave_up' (failed for the last time, or its URL is refused).
--   failure: '' or a JSON object ({id, url, error, attempt, gave_up}) for the failures list.
-- Writes: the group's pending list (XACK unless 'retry'), stats.webhooks_sent_total,
-- webhook_failures_total, webhooks_given_up_total, webhook_failures (the newest
-- WEBHOOK_FAILURES_CAP, newest first, each stamped with `at`, ms). Returns nothing.
-- Runs over maxmemory too (run_when_full in _common.lua): acknowledging frees memory.
run_when_full()
local now = now_ms()
local group, entry, result, failure = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local WEBHOOK_FAILURES_CAP = 100
if result ~= 'retry' then redis.call('XACK', K_OUTCOMES, group, entry) end
if result == 'sent' then stat('webhooks_sent_total') end
if result == 'retry' or result == 'gave_up' then stat('webhook_failures_total') end
if result == 'gave_up' then stat('webhooks_given_up_total') end
if failure ~= '' then
  local record = cjson.decode(failure)
  record['at'] = now
  redis.call('LPUSH', K_WEBHOOK_FAILURES, cjson.encode(record))
  redis.call('LTRIM', K_WEBHOOK_FAILURES, 0, WEBHOOK_FAILURES_CAP - 1)
end
