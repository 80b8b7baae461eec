-- GET /v1/calls/{id} of one call (the URL run.sh passes), with the key.
package.path = package.path .. ";" .. (os.getenv("BENCH_DIR") or ".") .. "/?.lua"
require("report")

wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
