-- Protect a TCP port (SSH by default) with iptables and ip6tables: closed to everyone, opened for
-- one client address for a while after it knocks, closed again by knock.after.
--
-- on_start creates a chain of its own, "knockknock", sends the port's new connections there and
-- drops them at its end. on_unlock inserts an ACCEPT for the client and remembers it: a repeated
-- knock extends the access instead of stacking rules. on_stop removes everything it added,
-- except on a reload (SIGHUP), when the rules stay so that the port is never open in between.
-- Commands run through knock.exec (no shell).
--
-- Use (as root, or with CAP_NET_ADMIN):
--   knockknock --hook hooks/iptables.lua --hook-arg port=22 --hook-arg seconds=30
-- A connection opened while access lasts stays up (established traffic is accepted).

local knock = require("knock")
local unpack = table.unpack or unpack -- Lua 5.1

local port = tostring(tonumber(knock.args.port) or 22)
local seconds = tonumber(knock.args.seconds) or 30
local chain = knock.args.chain or "knockknock"
local tools = { v4 = knock.args.iptables or "iptables", v6 = knock.args.ip6tables or "ip6tables" }

-- opened[ip] is the generation of the ACCEPT rule in place for ip; a timer closes only its own.
local opened = {}
local generation = 0

local function run(tool, ...)
  local code, out = knock.exec(tool, "-w", ...)
  if code ~= 0 then
    error(tool .. " " .. table.concat({...}, " ") .. ": " .. tostring(out), 2)
  end
end

local jump = { "INPUT", "-p", "tcp", "--dport", port, "-m", "conntrack", "--ctstate", "NEW", "-j", chain }

local function remove_chain(tool)
  knock.exec(tool, "-w", "-D", unpack(jump))
  knock.exec(tool, "-w", "-F", chain)
  knock.exec(tool, "-w", "-X", chain)
end

function on_start(reason)
  for _, tool in pairs(tools) do
    if knock.exec(tool, "-w", "-n", "-L", chain) == 0 then
      -- A reload keeps the rules in place (and the old state's timers still close what it
      -- opened); after a crash, the chain is emptied of stale grants.
      if reason ~= "reload" then
        run(tool, "-F", chain)
        run(tool, "-A", chain, "-j", "DROP")
      end
    else
      run(tool, "-N", chain)
      run(tool, "-A", chain, "-j", "DROP")
    end
    if knock.exec(tool, "-w", "-C", unpack(jump)) ~= 0 then
      run(tool, "-I", unpack(jump))
    end
  end
  knock.log("iptables: port closed", { port = port, chain = chain })
end

local function family(ip)
  return ip:find(":", 1, true) and tools.v6 or tools.v4
end

local function close(ip)
  run(family(ip), "-D", chain, "-s", ip, "-j", "ACCEPT")
  opened[ip] = nil
  knock.log("iptables: access closed", { ip = ip, port = port })
end

function on_unlock(ev)
  local ip = ev.ip
  generation = generation + 1
  local mine = generation
  if opened[ip] == nil then
    run(family(ip), "-I", chain, "-s", ip, "-j", "ACCEPT")
  end
  opened[ip] = mine
  knock.after(seconds, function()
    if opened[ip] == mine then close(ip) end
  end)
  knock.log("iptables: access granted", { ip = ip, port = port, seconds = seconds })
end

function on_stop(reason)
  if reason == "reload" then return end
  for ip in pairs(opened) do opened[ip] = nil end
  for _, tool in pairs(tools) do remove_chain(tool) end
  knock.log("iptables: chain removed", { chain = chain })
end
