-- Per-client access: the knock ports stay open, and each client that knocks correctly may use
-- port 8080 for 30 seconds. Everyone else is turned away (TCP reset, UDP dropped).
--
-- Use: knockknock --hook hooks/allow-client.lua
--      knockknock --hook hooks/allow-client.lua --hook-arg port=9000 --hook-arg seconds=60
-- then: knockknock knock HOST && curl http://HOST:8080/

local knock = require("knock")

local port = knock.arg("port", { type = "port", default = 8080 })
local seconds = knock.arg("seconds", { type = "duration", default = 30, min = 0.001, max = 365 * 24 * 3600 })

function on_start()
  local ok, err = knock.serve{ port = port, allow = "clients" }
  if not ok then error("cannot serve port " .. port .. ": " .. err) end
end

function on_unlock(ev)
  knock.allow(ev.ip, seconds)
  knock.log("access granted", { ip = ev.ip, port = port, seconds = seconds })
end

function on_stop(reason)
  -- On "reload" the new file's on_start has already served the port (the same call again does
  -- nothing), so stopping it here would take it away; at shutdown the server stops it anyway.
  if reason ~= "reload" then knock.stop_service(port) end
end
