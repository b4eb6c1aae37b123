-- Protect a TCP port (SSH by default) with nftables: closed to everyone, opened for one client
-- address for a while after it knocks. Access expires on its own (nftables set timeouts).
--
-- on_start installs a table of its own, "inet knockknock": two sets of allowed addresses
-- (IPv4, IPv6) whose elements time out, and a chain that accepts the port for those sets and drops
-- it for everyone else, in one atomic nft transaction. on_unlock adds the client. on_stop removes
-- the table, except on a reload (SIGHUP), when the rules and the granted addresses stay. Other
-- tables are never touched. Commands run through knock.exec (no shell).
--
-- Use (as root, or with CAP_NET_ADMIN):
--   knockknock --hook hooks/nftables.lua --hook-arg port=22 --hook-arg seconds=30
-- A connection opened while access lasts stays up (established traffic is accepted).

local knock = require("knock")

local port = tonumber(knock.args.port) or 22
local seconds = tonumber(knock.args.seconds) or 30
local nft = knock.args.nft or "nft"
local t = "inet " .. (knock.args.table or "knockknock")

local function run(script)
  local code, out = knock.exec(nft, script)
  if code ~= 0 then
    error("nft " .. script .. ": " .. tostring(out), 2)
  end
end

function on_start()
  -- One transaction: it creates what is missing and replaces the chain's rules, so a restart
  -- or a reload never leaves the port open, and addresses already granted keep their access.
  run(table.concat({
    "add table " .. t,
    "add set " .. t .. " allowed4 { type ipv4_addr; flags timeout; }",
    "add set " .. t .. " allowed6 { type ipv6_addr; flags timeout; }",
    "add chain " .. t .. " input { type filter hook input priority -10; policy accept; }",
    "flush chain " .. t .. " input",
    "add rule " .. t .. " input ct state established,related accept",
    "add rule " .. t .. " input tcp dport " .. port .. " ip saddr @allowed4 accept",
    "add rule " .. t .. " input tcp dport " .. port .. " ip6 saddr @allowed6 accept",
    "add rule " .. t .. " input tcp dport " .. port .. " drop",
  }, "; "))
  knock.log("nftables: port closed", { port = port, table = t })
end

function on_unlock(ev)
  local set = ev.ip:find(":", 1, true) and "allowed6" or "allowed4"
  -- Deleting first makes a repeated knock restart the timeout instead of failing.
  knock.exec(nft, "delete element " .. t .. " " .. set .. " { " .. ev.ip .. " }")
  run("add element " .. t .. " " .. set .. " { " .. ev.ip .. " timeout " .. seconds .. "s }")
  knock.log("nftables: access granted", { ip = ev.ip, port = port, seconds = seconds })
end

function on_stop(reason)
  if reason == "reload" then return end
  run("delete table " .. t)
  knock.log("nftables: table removed", { table = t })
end
