-- Test hook: appends one line per event to the file named by --hook-arg out=FILE.
local knock = require("knock")

local function record(kind, ev)
  local f = assert(io.open(knock.args.out, "a"))
  if ev then
    f:write(string.format("%s ip=%s port=%d source_port=%d sequence=%s time=%.6f elapsed=%.6f reason=%s\n",
      kind, ev.ip, ev.port, ev.source_port, table.concat(ev.sequence, ","), ev.time, ev.elapsed,
      tostring(ev.reason)))
  else
    f:write(kind .. "\n")
  end
  f:close()
end

function on_start() record("start") end
function on_stop() record("stop") end
function on_unlock(ev) record("unlock", ev) end
function on_fail(ev) record("fail", ev) end
function on_knock(ev) record("knock", ev) end
