-- The actions of a knockd.conf, run as knockd runs them: the default hook of --knockd-config.
--
-- For each door, on unlock: its start_command (start_command_6 for an IPv6 client) through
-- /bin/sh -c, with every %IP% replaced by the client's address; then, if the door has a
-- stop_command, that command cmd_timeout seconds later. The address is the one the knock came
-- from, already parsed and printed by the server (digits, dots, colons and hex letters only),
-- and nothing else from the network reaches the shell. A command is cancelled at
-- --hook-timeout; each is logged with its exit status.
--
-- Use: knockknock --knockd-config /etc/knockd.conf          (this hook is embedded too)
-- To add your own Lua to knockd's doors, copy this file and pass it with --hook.

local knock = require("knock")

local function run(door, what, command, ip)
  if command == nil or command == "" then return end
  local line = command:gsub("%%IP%%", ip)
  local status = os.execute(line)
  local level = status == 0 and "info" or "warn"
  knock.log("knockd command", { door = door, what = what, command = line, status = status, level = level })
end

on_unlock = {}
for _, door in ipairs(knock.config.doors) do
  on_unlock[door.name] = function(ev)
    local v6 = ev.ip:find(":", 1, true) ~= nil
    local start = v6 and door.start_command_6 or door.start_command
    local stop = v6 and door.stop_command_6 or door.stop_command
    run(door.name, "start", start, ev.ip)
    -- As in knockd, a stop command only follows a start command.
    if start ~= nil and start ~= "" and stop ~= nil and stop ~= "" then
      knock.after(door.cmd_timeout or 10, function() run(door.name, "stop", stop, ev.ip) end)
    end
  end
end
