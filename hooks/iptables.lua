-- Protect a TCP port (SSH by default) with iptables and ip6tables: closed to everyone, opened for
-- one client address for a while after it knocks. The door fails closed: no step of this hook,
-- and no way knockknock can end, opens the port to everyone.
--
-- Grants live in the kernel's "recent" match (xt_recent): a chain of the hook's own,
-- "knockknock", accepts an address that a recent table saw within the last `seconds`
-- (-m recent --rcheck --seconds N) and drops everything else; INPUT sends the port's new
-- connections to it. A grant is "+ADDR" written to /proc/net/xt_recent/TABLE, so it expires in
-- the kernel even when knockknock is killed, and a repeated knock restarts its access time.
-- on_start writes each family's rules to a file and loads it with one `iptables-restore
-- --noflush`: the file declares the chain, so the chain is created or replaced in one commit and
-- is never empty or without its DROP (at a restart after a crash, and at a reload too). A start
-- clears the tables; a reload (SIGHUP) keeps them, and the grants in them. When on_start cannot
-- close the port it raises an error and knockknock exits 1 instead of guarding nothing.
-- on_unlock only records the client; on_flush, which the server calls after each batch of events
-- (before it confirms an authenticated unlock), writes every recorded address.
-- on_stop clears the tables ("/") and leaves the chain: once knockknock stops, the port stays
-- closed to everyone.
--
-- Capacity: the kernel keeps at most ip_list_tot addresses in one recent table (100 on current
-- kernels: /sys/module/xt_recent/parameters/ip_list_tot; boot parameter xt_recent.ip_list_tot=N,
-- or "options xt_recent ip_list_tot=N" where xt_recent is a module) and forgets the least
-- recently seen when it is full. The hook spreads grants over `tables` tables per family, in
-- turn, so the last tables x ip_list_tot grants are kept whatever the addresses. A spoofed flood of
-- more unlocks than that within the access time pushes older grants out: where that matters use
-- authenticated knocks (--secret-file), or hooks/nftables.lua, whose sets have no such bound.
--
-- Use (as root, or with CAP_NET_ADMIN):
--   knockknock --hook hooks/iptables.lua --hook-arg port=22 --hook-arg seconds=30
-- Hook arguments (--hook-arg KEY=VALUE):
--   port=22                  the TCP port to protect
--   seconds=30               how long a grant lasts, in whole seconds (or 2m, 1h); a new knock
--                            starts it again
--   chain=knockknock         the chain the hook owns; its recent tables are CHAIN-v4-1... CHAIN-v6-1...
--   iptables=iptables        the IPv4 program (iptables-legacy, iptables-nft, or a path)
--   ip6tables=ip6tables      the IPv6 program
--   iptables_restore=...     the restore programs (default: the program above with -restore
--   ip6tables_restore=...    appended, e.g. iptables-restore)
--   tables=64                recent tables per family (1 to 1024; see Capacity)
--   rules_dir=/run           where on_start writes the rule files it loads (removed after)
-- A malformed value (port=2222x, seconds=1.5) stops knockknock at start, and `knockknock check`,
-- with one line naming it (exit 2).
-- A connection opened while access lasts stays up (only new connections go to the chain).
--
-- To open the port to everyone again, on purpose (stop knockknock first, or it closes it again at
-- its next start), for iptables and again for ip6tables:
--   iptables -D INPUT -p tcp --dport 22 -m conntrack --ctstate NEW -j knockknock
--   iptables -F knockknock && iptables -X knockknock

local knock = require("knock")
local unpack = table.unpack or unpack -- Lua 5.1

-- A malformed argument stops the hook at load, naming it: never a default port guarded instead.
-- --seconds of the recent match takes whole seconds only.
local port = knock.arg("port", { type = "port", default = 22 })
local seconds = knock.arg("seconds", { type = "duration", default = 30, min = 1, max = 365 * 24 * 3600, whole = true })
local ntables = knock.arg("tables", { type = "number", default = 64, min = 1, max = 1024, whole = true })
local chain = knock.arg("chain", { default = "knockknock" })
local rules_dir = knock.arg("rules_dir", { default = "/run" })
if not chain:match("^[%w_-]+$") then error("iptables: chain: use letters, digits, _ and -", 0) end

local families = {
  { name = "v4", label = "IPv4", tool = knock.arg("iptables", { default = "iptables" }), restore = knock.arg("iptables_restore") },
  { name = "v6", label = "IPv6", tool = knock.arg("ip6tables", { default = "ip6tables" }), restore = knock.arg("ip6tables_restore") },
}
for _, f in ipairs(families) do
  f.restore = f.restore or f.tool .. "-restore"
  f.tables = {}
  for i = 1, ntables do f.tables[i] = chain .. "-" .. f.name .. "-" .. i end
end

local per_table = 100 -- the kernel's ip_list_tot, read again by on_start

local jump = { "INPUT", "-p", "tcp", "--dport", tostring(port), "-m", "conntrack", "--ctstate", "NEW", "-j", chain }

-- recent writes one command to a recent table: "+ADDR" grants, "/" clears. It returns nil, or why
-- not. The kernel takes one command per write, at offset 0: one open each.
local function recent(name, command)
  local file, err = io.open("/proc/net/xt_recent/" .. name, "w")
  if not file then return err end
  local ok, werr = file:write(command)
  file:close()
  if not ok then return name .. ": " .. tostring(werr) end
end

local function clear(f)
  for _, name in ipairs(f.tables) do
    local err = recent(name, "/")
    if err then return err end
  end
end

-- restore loads rules with one iptables-restore --noflush: one commit, all of it or nothing.
local function restore(f, rules)
  local path = rules_dir .. "/" .. chain .. "-" .. f.name .. ".rules"
  local file, err = io.open(path, "w")
  if not file then return "cannot write the rules: " .. err end
  local ok, werr = file:write(rules)
  file:close()
  if not ok then
    os.remove(path)
    return "cannot write " .. path .. ": " .. tostring(werr)
  end
  local code, out = knock.exec(f.restore, "-w", "--noflush", path)
  os.remove(path)
  if code == 0 then return nil end
  if code == nil then return f.restore .. " did not run: " .. tostring(out) end
  return f.restore .. " exited " .. code .. ": " .. (out:match("[^\n]+") or "")
end

function on_start(reason)
  for _, f in ipairs(families) do
    local rules = { "*filter", ":" .. chain .. " - [0:0]" }
    for _, name in ipairs(f.tables) do
      rules[#rules + 1] = "-A " .. chain .. " -m recent --rcheck --seconds " .. seconds .. " --name " .. name .. " -j ACCEPT"
    end
    rules[#rules + 1] = "-A " .. chain .. " -j DROP"
    if knock.exec(f.tool, "-w", "-C", unpack(jump)) ~= 0 then
      rules[#rules + 1] = "-I " .. table.concat(jump, " ") -- in the same commit as the chain
    end
    rules[#rules + 1] = "COMMIT\n"
    local err = restore(f, table.concat(rules, "\n"))
    if err then error("iptables: port " .. port .. " not closed for " .. f.label .. ": " .. err, 0) end
    if reason ~= "reload" then
      -- A start grants nobody: what a killed predecessor granted ends now, not at its timeout.
      err = clear(f)
      if err then error("iptables: grants of a previous run not cleared: " .. err, 0) end
    end
  end
  local file = io.open("/sys/module/xt_recent/parameters/ip_list_tot")
  per_table = file and tonumber(file:read("*l")) or per_table
  if file then file:close() end
  knock.log("iptables: port closed", { port = port, chain = chain, reason = reason, capacity = per_table * ntables })
end

-- The addresses that unlocked since the last flush (a set: a repeat counts once).
local pending = {}

-- Where each address was granted, so that a repeated knock refreshes its entry instead of adding
-- a second one: two generations, the older forgotten once everything in it has expired (or was
-- pushed out of the kernel's tables anyway).
local placed, placed_old, placed_count, born = {}, {}, 0, os.time()
local turn = 0

function on_unlock(ev)
  local ip = ev.ip
  if not ip:match("^[%x:.]+$") then error("iptables: not an address: " .. ip, 0) end
  pending[ip] = true
end

function on_flush()
  if next(pending) == nil then return end
  local batch = pending
  pending = {}
  if os.time() - born >= seconds or placed_count >= ntables * per_table then
    placed, placed_old, placed_count, born = {}, placed, 0, os.time()
  end
  local n, first, failed, why = 0, nil, 0, nil
  for ip in pairs(batch) do
    local f = ip:find(":", 1, true) and families[2] or families[1]
    local slot = placed[ip] or placed_old[ip]
    if not slot then
      turn = turn % ntables + 1
      slot = turn
    end
    if not placed[ip] then placed_count = placed_count + 1 end
    placed[ip] = slot
    local err = recent(f.tables[slot], "+" .. ip)
    if err then
      failed, why = failed + 1, err
    else
      n, first = n + 1, ip
    end
  end
  if n > 0 then
    knock.log("iptables: access granted", { ip = n == 1 and first or nil, count = n, port = port, seconds = seconds })
  end
  if failed > 0 then error("iptables: " .. failed .. " grants not applied: " .. why, 0) end
end

function on_stop(reason)
  if reason == "reload" then return end -- the new hook has taken the chain over, grants and all
  for _, f in ipairs(families) do
    local err = clear(f)
    if err then error("iptables: grants not removed: " .. err, 0) end
  end
  knock.log("iptables: grants removed, the port stays closed", { port = port, chain = chain })
end
