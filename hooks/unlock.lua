-- The default unlock hook: what the original demonstration did.
--
-- On unlock it logs who knocked, stops listening on the knock ports and starts the built-in
-- service on port 8080 (HTTP on TCP, a greeting on UDP). Before the knock, a UDP scan shows the
-- knock ports open|filtered and 8080 closed; after it, the knock ports closed and 8080 open.
--
-- Use: knockknock (this file is also embedded in the binary), or --hook hooks/unlock.lua.
-- --hook-arg port=N serves on another port.

local knock = require("knock")

function on_unlock(ev)
  knock.log("door unlocked", { ip = ev.ip, elapsed = ev.elapsed })
  knock.close_knock_ports()
  local ok, err = knock.serve{ port = tonumber(knock.args.port) or 8080 }
  if not ok then
    knock.log("could not start the service", { err = err, level = "error" })
  end
end
