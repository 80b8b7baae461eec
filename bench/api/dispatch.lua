-- POST /v1/calls with the agent-era body, as a client dispatching calls.
-- BENCH_KEY, BENCH_AGENT and BENCH_TO come from run.sh.
package.path = package.path .. ";" .. (os.getenv("BENCH_DIR") or ".") .. "/?.lua"
require("report")

wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.format('{"agent_id": "%s", "to": "%s", "context": {"bench": true}}',
  os.getenv("BENCH_AGENT"), os.getenv("BENCH_TO"))
