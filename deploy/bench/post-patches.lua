-- wrk script: POST /v1/patches with a unique patch id per request (thread id + counter), so
-- every request is a new durable patch, not an idempotent replay.
-- Usage: GHOST_API_KEY=... wrk -t2 -c8 -d10s -s deploy/bench/post-patches.lua http://127.0.0.1:8080
local counter = 0
local thread_id = 0
local threads = 0

function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("GHOST_API_KEY")
end

function request()
  counter = counter + 1
  local id = string.format("wrk-%d-%d-%d", os.time(), thread_id, counter)
  local body = string.format(
    '{"id":"%s","target":"BENCH","edits":[{"op":"write","path":"%s.txt","contents":"x\\n"}]}',
    id, id)
  return wrk.format(nil, "/v1/patches", nil, body)
end

function done(summary, latency, requests)
  io.write(string.format("non-2xx or errors: %d status, %d connect, %d read, %d write, %d timeout\n",
    summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout))
end
