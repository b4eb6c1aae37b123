-- The benchmark's "reopen" hook: every unlock appends one line to the file named by
-- --hook-arg out=FILE, opening and closing it each time (as knockd's `echo %IP% >> FILE` does, and
-- as a hook that must not lose a line when killed would), and counts unlocks; the total is logged
-- at shutdown so that scripts/bench.sh can check the hook saw every unlock.
local knock = require("knock")

local unlocks = 0

function on_unlock(ev)
  local f = assert(io.open(knock.args.out, "a"))
  f:write(ev.ip, " ", ev.door, " ", ev.port, "\n")
  f:close()
  unlocks = unlocks + 1
end

function on_stop() knock.log("bench hook", { unlocks = unlocks }) end
