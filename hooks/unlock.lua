-- The default unlock hook: what the original demonstration did.
--
-- On unlock it logs who knocked, starts the built-in service on port 8080 (HTTP on TCP, a
-- greeting on UDP) and then stops listening on the knock ports. Before the knock, a UDP scan
-- shows the knock ports open|filtered and 8080 closed; after it, the knock ports closed and 8080
-- open. When the service cannot start (another program holds the port) the knock ports stay
-- open, the log says why, and the next correct knock tries again.
--
-- Use: knockknock (this file is also embedded in the binary), or --hook hooks/unlock.lua.
-- --hook-arg port=N serves on another port.

local knock = require("knock")

local port = knock.arg("port", { type = "port", default = 8080 })

function on_unlock(ev)
  knock.log("door unlocked", { ip = ev.ip, elapsed = ev.elapsed })
  if not knock.serve{ port = port } then
    -- knock.serve has logged why: keep the door to the server open rather than lock everyone out.
    knock.log("the knock ports stay open: the service did not start", { port = port, level = "warn" })
    return
  end
  knock.close_knock_ports()
end
