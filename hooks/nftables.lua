-- Protect a TCP port (SSH by default) with nftables: closed to everyone, opened for one client
-- address for a while after it knocks. Access expires on its own (nftables set timeouts).
--
-- on_start installs a table of its own, "inet knockknock": two sets of allowed addresses
-- (IPv4, IPv6) whose elements time out, and a chain that accepts the port for those sets and drops
-- it for everyone else. on_unlock adds the client. on_stop removes the table. Other tables are
-- never touched. Commands run through knock.exec (no shell).
--
-- Use (as root, or with CAP_NET_ADMIN):
--   knockknock --hook hooks/nftables.lua --hook-arg port=22 --hook-arg seconds=30
-- A connection opened while access lasts stays up (established traffic is accepted).

local knock = require("knock")

local port = tonumber(knock.args.port) or 22
local seconds = tonumber(knock.args.seconds) or 30
local nft = knock.args.nft or "nft"
local table_name = knock.args.table or "knockknock"

local function run(...)
  local code, out = knock.exec(nft, ...)
  if code ~= 0 then
    error("nft " .. table.concat({...}, " ") .. ": " .. tostring(out), 2)
  end
end

function on_start()
  -- Start from a clean table of our own, so a restart after a crash does not stack rules.
  knock.exec(nft, "delete", "table", "inet", table_name)
  run("add", "table", "inet", table_name)
  run("add", "set", "inet", table_name, "allowed4", "{ type ipv4_addr; flags timeout; }")
  run("add", "set", "inet", table_name, "allowed6", "{ type ipv6_addr; flags timeout; }")
  run("add", "chain", "inet", table_name, "input", "{ type filter hook input priority -10; policy accept; }")
  run("add", "rule", "inet", table_name, "input", "ct", "state", "established,related", "accept")
  run("add", "rule", "inet", table_name, "input", "tcp", "dport", port, "ip", "saddr", "@allowed4", "accept")
  run("add", "rule", "inet", table_name, "input", "tcp", "dport", port, "ip6", "saddr", "@allowed6", "accept")
  run("add", "rule", "inet", table_name, "input", "tcp", "dport", port, "drop")
  knock.log("nftables: port closed", { port = port, table = "inet " .. table_name })
end

function on_unlock(ev)
  local set = ev.ip:find(":", 1, true) and "allowed6" or "allowed4"
  -- Deleting first makes a repeated knock restart the timeout instead of failing.
  knock.exec(nft, "delete", "element", "inet", table_name, set, "{ " .. ev.ip .. " }")
  run("add", "element", "inet", table_name, set, "{ " .. ev.ip .. " timeout " .. seconds .. "s }")
  knock.log("nftables: access granted", { ip = ev.ip, port = port, seconds = seconds })
end

function on_stop()
  run("delete", "table", "inet", table_name)
  knock.log("nftables: table removed", { table = "inet " .. table_name })
end
