-- Protect a TCP port (SSH by default) with nftables: closed to everyone, opened for one client
-- address for a while after it knocks. The door fails closed: no step of this hook, and no way
-- knockknock can end, opens the port to everyone.
--
-- on_start installs a table of its own, "inet knockknock", in one atomic nft transaction: two
-- sets of allowed addresses (IPv4, IPv6) whose elements time out in the kernel, and a chain that
-- accepts the port for those sets and drops it for everyone else. The same transaction replaces
-- the chain's rules when the table is already there, so a restart or a reload never leaves a
-- moment without the drop. A start (also after a crash) empties the sets; a reload (SIGHUP) keeps
-- the granted addresses. When on_start cannot close the port (no nft, no nf_tables) it raises an
-- error and knockknock exits 1 instead of guarding nothing.
-- on_unlock only records the client; on_flush, which the server calls after each batch of events
-- (before it confirms an authenticated unlock), grants every recorded address with one nft run.
-- A repeated knock restarts that client's access time.
-- on_stop removes the grants and leaves the rules: once knockknock stops, or is killed (then the
-- grants expire on their own), the port stays closed to everyone. Other tables are never touched.
--
-- Use (as root, or with CAP_NET_ADMIN):
--   knockknock --hook hooks/nftables.lua --hook-arg port=22 --hook-arg seconds=30
-- Hook arguments (--hook-arg KEY=VALUE):
--   port=22           the TCP port to protect
--   seconds=30        how long a grant lasts, in whole seconds (or 2m, 1h); a new knock starts
--                     it again
--   nft=nft           the nft program
--   table=knockknock  the name of the inet table the hook owns
-- A malformed value (port=2222x, seconds=1.5) stops knockknock at start, and `knockknock check`,
-- with one line naming it (exit 2).
-- A connection opened while access lasts stays up (established traffic is accepted).
--
-- To open the port to everyone again, on purpose (stop knockknock first, or it closes it again
-- at its next start):
--   nft delete table inet knockknock

local knock = require("knock")
local unpack = table.unpack or unpack -- Lua 5.1

-- A malformed argument stops the hook at load, naming it: never a default port guarded instead.
local port = knock.arg("port", { type = "port", default = 22 })
local seconds = knock.arg("seconds", { type = "duration", default = 30, min = 1, max = 365 * 24 * 3600, whole = true })
local nft = knock.arg("nft", { default = "nft" })
local name = knock.arg("table", { default = "knockknock" })
if not name:match("^[%a_][%w_]*$") then error("nftables: table: use letters, digits and _", 0) end
local t = "inet " .. name

-- run applies one nft script (one transaction: all of it or nothing); it returns nil, or why not.
local function run(script)
  local code, out = knock.exec(nft, script)
  if code == 0 then return nil end
  if code == nil then return nft .. " did not run: " .. tostring(out) end
  return nft .. " exited " .. code .. ": " .. (out:match("[^\n]+") or "")
end

function on_start(reason)
  local script = {
    "add table " .. t,
    "add set " .. t .. " allowed4 { type ipv4_addr; flags timeout; }",
    "add set " .. t .. " allowed6 { type ipv6_addr; flags timeout; }",
    "add chain " .. t .. " input { type filter hook input priority -10; policy accept; }",
    "flush chain " .. t .. " input",
    "add rule " .. t .. " input ct state established,related accept",
    "add rule " .. t .. " input tcp dport " .. port .. " ip saddr @allowed4 accept",
    "add rule " .. t .. " input tcp dport " .. port .. " ip6 saddr @allowed6 accept",
    "add rule " .. t .. " input tcp dport " .. port .. " drop",
  }
  if reason ~= "reload" then
    -- A start grants nobody: what a killed predecessor granted ends now, not at its timeout.
    script[#script + 1] = "flush set " .. t .. " allowed4"
    script[#script + 1] = "flush set " .. t .. " allowed6"
  end
  local err = run(table.concat(script, "; "))
  if err then error("nftables: port " .. port .. " not closed: " .. err, 0) end
  knock.log("nftables: port closed", { port = port, table = t, reason = reason })
end

-- The addresses that unlocked since the last flush, by family (a set: a repeat counts once).
local pending4, pending6 = {}, {}

function on_unlock(ev)
  local ip = ev.ip
  if not ip:match("^[%x:.]+$") then error("nftables: not an address: " .. ip, 0) end
  if ip:find(":", 1, true) then pending6[ip] = true else pending4[ip] = true end
end

-- grant is the nft script that (re)grants a list of addresses in set: add (nothing happens when
-- present), delete, add with the timeout. In one transaction that restarts the access time of an
-- address granted before, and never fails for a new one.
local function grant(set, ips)
  local list = table.concat(ips, ", ")
  local timeout = " timeout " .. seconds .. "s"
  local prefix = " element " .. t .. " " .. set .. " { "
  return "add" .. prefix .. list .. " }; delete" .. prefix .. list .. " }; add" .. prefix
    .. table.concat(ips, timeout .. ", ") .. timeout .. " }"
end

local function keys(set)
  local list = {}
  for ip in pairs(set) do list[#list + 1] = ip end
  return list
end

-- One nft argument holds at most 128 KiB: 512 addresses take under 80 KiB. The server's batches
-- have at most 512 events, so this is one run per batch.
local per_run = 512

function on_flush()
  local ips4, ips6 = keys(pending4), keys(pending6)
  local n = #ips4 + #ips6
  if n == 0 then return end
  pending4, pending6 = {}, {}
  local i4, i6 = 1, 1
  while i4 <= #ips4 or i6 <= #ips6 do
    local take4 = math.min(#ips4 - i4 + 1, per_run)
    local take6 = math.min(#ips6 - i6 + 1, per_run - take4)
    local script = {}
    if take4 > 0 then script[#script + 1] = grant("allowed4", { unpack(ips4, i4, i4 + take4 - 1) }) end
    if take6 > 0 then script[#script + 1] = grant("allowed6", { unpack(ips6, i6, i6 + take6 - 1) }) end
    i4, i6 = i4 + take4, i6 + take6
    script = table.concat(script, "; ")
    -- A grant that expires between the add and the delete fails the whole transaction, which
    -- then did nothing; the second run sees the address gone and adds it.
    local err = run(script)
    if err then err = run(script) end
    if err then error("nftables: " .. (take4 + take6) .. " grants not applied: " .. err, 0) end
  end
  knock.log("nftables: access granted", { ip = n == 1 and (ips4[1] or ips6[1]) or nil, count = n, port = port, seconds = seconds })
end

function on_stop(reason)
  if reason == "reload" then return end -- the new hook has taken the table over, grants and all
  local err = run("flush set " .. t .. " allowed4; flush set " .. t .. " allowed6")
  if err then error("nftables: grants not removed: " .. err, 0) end
  knock.log("nftables: grants removed, the port stays closed", { port = port, table = t, open_with = "nft delete table " .. t })
end
