-- wrk script: POST /predict with a BODY_BYTES-byte JSON body and a random
-- user among BENCH_USERS (default 1,000,000), for benches/body-size.sh.
local users = tonumber(os.getenv("BENCH_USERS") or "1000000")
local size = tonumber(os.getenv("BODY_BYTES") or "64")
local body = '{"features":"' .. string.rep("x", math.max(0, size - 16)) .. '"}'
local prefix, suffix
function init(args)
  math.randomseed(os.time() + (thread_no or 0))
  local tmpl = wrk.format("POST", "/predict", { ["Content-Type"] = "application/json", ["X-User-Id"] = "@@UID@@" }, body)
  local s, e = string.find(tmpl, "@@UID@@", 1, true)
  prefix = string.sub(tmpl, 1, s - 1) .. "user-"
  suffix = string.sub(tmpl, e + 1)
end
function request()
  return prefix .. math.random(users) .. suffix
end
