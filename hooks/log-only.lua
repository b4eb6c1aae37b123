-- A hook that only logs: every unlock and every failed attempt, nothing else changes.
--
-- Use it to watch who knocks before wiring a firewall, or as the start of your own hook:
--   knockknock --hook hooks/log-only.lua
-- With --log-format json each line is one JSON object (time, level, msg, event, ip, port, ...).

local knock = require("knock")

function on_unlock(ev)
  knock.log("sequence completed", { ip = ev.ip, port = ev.port, elapsed = ev.elapsed })
end

function on_fail(ev)
  knock.log("attempt failed", { ip = ev.ip, port = ev.port, reason = ev.reason })
end
