-- Two doors for SSH, as knockd's sample configuration has them: one knock sequence opens port 22
-- for the client that knocked, another closes it again. Each door has its own handler:
-- on_unlock is a table of functions by door name, so there is no if-chain on ev.door.
--
-- Use (as root, or with CAP_NET_ADMIN and CAP_NET_RAW):
--   knockknock --capture --door 'openSSH=7000:tcp,8000:tcp,9000:tcp' \
--              --door 'closeSSH=9000:tcp,8000:tcp,7000:tcp' --hook hooks/ssh-doors.lua
-- then, from the client: knock HOST 7000 8000 9000 && ssh HOST ... ; knock HOST 9000 8000 7000
--
-- It keeps a table of its own, "inet knockknock_ssh": a set of allowed addresses per family and
-- a chain that accepts the port for them and drops it for everyone else, installed in one nft
-- transaction. An opened address is closed by the close door, or after hours (a forgotten close
-- still ends). On stop the grants end and the drop stays; remove it on purpose with
--   nft delete table inet knockknock_ssh
-- --hook-arg port=22 (the protected TCP port), hours=8, nft=nft.

local knock = require("knock")

local port = knock.arg("port", { type = "port", default = 22 })
local hours = knock.arg("hours", { type = "number", default = 8, min = 1, max = 24 * 365, whole = true })
local nft = knock.arg("nft", { default = "nft" })
local t = "inet knockknock_ssh"

local function run(script)
  local code, out = knock.exec(nft, script)
  if code ~= 0 then error("nft " .. script .. ": " .. tostring(out), 2) end
end

local function set_of(ip)
  return ip:find(":", 1, true) and "allowed6" or "allowed4"
end

function on_start()
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
  knock.log("ssh-doors: port closed", { port = port })
end

on_unlock = {
  openSSH = function(ev)
    run("add element " .. t .. " " .. set_of(ev.ip) .. " { " .. ev.ip .. " timeout " .. hours .. "h }")
    knock.log("ssh-doors: opened", { ip = ev.ip, port = port, hours = hours })
  end,
  closeSSH = function(ev)
    -- Closing what is not open is fine: the address may have timed out already.
    knock.exec(nft, "delete element " .. t .. " " .. set_of(ev.ip) .. " { " .. ev.ip .. " }")
    knock.log("ssh-doors: closed", { ip = ev.ip, port = port })
  end,
}

function on_stop(reason)
  if reason == "reload" then return end
  run("flush set " .. t .. " allowed4; flush set " .. t .. " allowed6")
  knock.log("ssh-doors: grants ended, port stays closed", { port = port })
end
