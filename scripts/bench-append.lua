-- The benchmark's "all-in" hook: every unlock appends one line to the file named by
-- --hook-arg out=FILE, written out at once (the file is opened once, unbuffered: one write per
-- line, as a log hook keeps its file), and counts unlocks; the total is logged at shutdown
-- so that scripts/bench.sh can check the hook saw every unlock. scripts/bench-reopen.lua opens
-- and closes the file for each line instead.
local knock = require("knock")

local unlocks = 0
local out = assert(io.open(knock.args.out, "a"))
out:setvbuf("no")

function on_unlock(ev)
  out:write(ev.ip .. " " .. ev.door .. " " .. ev.port .. "\n")
  unlocks = unlocks + 1
end

function on_stop()
  out:close()
  knock.log("bench hook", { unlocks = unlocks })
end
