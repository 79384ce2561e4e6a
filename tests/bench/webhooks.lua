-- wrk script: realistic BestSMS result webhooks. Many MessageIDs, 1-5 recipients each, 15 %
-- Pending, and 5 % sent twice (BestSMS retries). Each wrk thread has its own sequence.
local counter = 0
local thread_id = 0
local previous = nil
local token = os.getenv("BENCH_TOKEN") or "benchmark-token-2026"

function setup(thread)
  thread_id = thread_id + 1
  thread:set("id", thread_id)
end

function init(args)
  math.randomseed(id * 7919)
  prefix = string.format("b%d-%d", id, math.random(1, 1000000000))
end

local function body()
  counter = counter + 1
  local message = math.floor(counter / 3)
  local seq = counter % 5 + 1
  local status, result = "Success", "delivered"
  if math.random() < 0.15 then status, result = "Pending", "submitted" end
  return string.format(
    '{"Version":"v2.04","Sender":"webhooks@example.com.au","APIKey":"%s","Type":"SMS",' ..
    '"Destination":"+6141%07d","MessageID":"%s-%d","DestSeq":"%08d","SubAccount":"Clinic-%d",' ..
    '"Department":"Reminders","JobNumber":"10AB20CE","SendTimeUTC":"2026-11-27 0%d:%02d:%02d",' ..
    '"SentTimeUTC_RFC3339":"2026-11-27T0%d:%02d:%02d.000Z","Status":"%s","Result":"%s",' ..
    '"Message":"","Price":"0.10","Detail":"SMSParts:1","URL":""}',
    token, (counter * 13) % 10000000, prefix, message, seq, message % 7,
    counter % 10, counter % 60, counter % 60, counter % 10, counter % 60, counter % 60, status, result)
end

delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")

function delay()
  return delay_ms
end

function request()
  local b
  if previous ~= nil and math.random() < 0.05 then b = previous else b = body() end
  previous = b
  return wrk.format("POST", "/webhooks/bestsms", {["Content-Type"] = "application/json"}, b)
end
