-- wrk script for deploy/bench/compare.sh: POST a one-file patch with a unique id per request to
-- $BENCH_PATH (default /v1/patches) for target $BENCH_TARGET (default INTAKE), with `Authorization: Bearer $GHOST_API_KEY` when set, and
-- print the error counts wrk otherwise hides.
local counter = 0
local thread_id = 0
local threads = 0

function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

function init(args)
  wrk.method = "POST"
  wrk.path = os.getenv("BENCH_PATH") or "/v1/patches"
  wrk.headers["Content-Type"] = "application/json"
  local key = os.getenv("GHOST_API_KEY")
  if key and key ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. key
  end
  run_tag = os.getenv("BENCH_RUN") or tostring(os.time())
  -- INTAKE has no executor: patches are stored durably and wait, so only intake is measured.
  target = os.getenv("BENCH_TARGET") or "INTAKE"
end

function request()
  counter = counter + 1
  local id = string.format("cmp-%s-%d-%d", run_tag, thread_id, counter)
  local body = string.format(
    '{"id":"%s","target":"%s","edits":[{"op":"write","path":"cmp/%s.txt","contents":"x\\n"}]}',
    id, target, id)
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  io.write(string.format("errors: status %d connect %d read %d write %d timeout %d\n",
    summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout))
end
