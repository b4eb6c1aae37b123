#!/usr/bin/env bash
# attack.sh: issue 11 ("Under attack"), the heavy versions. Each attack runs against a real server
# process on loopback, from spoofed 127.0.0.0/8 source addresses (scripts/loadgen), and prints one
# line: ok when the server holds, FAIL when the attack succeeds. attack_test.go has the cheap
# versions that CI runs; the IPv6, allow="clients" and hook-timeout attacks need nothing heavy and
# run from it here too (a network namespace of their own, documentation addresses).
#
#   1  100,000 spoofed complete sequences, a genuine client from another /24 knocking during them
#   2  a genuine first knock, 70,000 spoofed first knocks in about half a second, the rest of it;
#      a sustained 100,000 spoofed first knocks a second for 10 s, the genuine knocks 1 s apart
#   3  --ban-after 3: 200,000 spoofed wrong knocks, then an address failing 40 times; the ban
#      table filled with bans (3 wrong knocks a source); a flood of two-failure sources while an
#      address guesses slowly; the sequence right behind the failure that bans; IPv6 /64 bans
#   4  the built-in service: 5,000 idle connections and 200 slow-body POSTs (RSS, connections
#      held, a normal client after); a persistent attacker redialling (a normal client during);
#      allow="clients"
#   5  duplicates: 100 trials of 10 clients at once for each case
#   6  knock.exec and os.execute at the hook timeout: which processes outlive the call
#
# Linux, as root, a few minutes. Exit 1 when any attack succeeds.
#
#   scripts/attack.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "$(uname -s)" != Linux ] || [ "$(id -u)" -ne 0 ]; then
  echo "attack.sh: needs Linux and root (spoofed loopback sources, network namespaces)" >&2
  exit 2
fi
export PATH=$PATH:/usr/local/go/bin
work=$(mktemp -d /tmp/knockknock-attack.XXXXXX)
srv=
cleanup() {
  [ -n "$srv" ] && kill "$srv" 2>/dev/null
  jobs -p | xargs -r kill 2>/dev/null
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/knockknock" knockknock.go || exit 2
go build -o "$work/loadgen" ./scripts/loadgen || exit 2
kk=$work/knockknock
lg=$work/loadgen

failures=0
# result ok|FAIL|note NAME TEXT
result() {
  printf '%-4s %-28s %s\n' "$1" "$2" "$3"
  [ "$1" != FAIL ] || failures=$((failures + 1))
}

# ports N: N free UDP and TCP ports, comma-separated.
ports() {
  local used out=() p
  used=" $(ss -Hlnu; ss -Hlnt) "
  while [ ${#out[@]} -lt "$1" ]; do
    p=$((20000 + RANDOM % 40000))
    case "$used ${out[*]} " in *":$p "* | *" $p "*) continue ;; esac
    out+=("$p")
  done
  local IFS=,
  echo "${out[*]}"
}

# The hook: appends each unlock's ip to a table (a hook that does little); writes "unlock IP" and
# "banned IP" lines for the addresses that start with watch (all without it); at on_stop
# "total N" (unlocks it saw) and "bans N".
cat >"$work/hook.lua" <<'EOF'
local knock = require("knock")
ips, bans = {}, 0
local function line(s)
  local f = assert(io.open(knock.args.out, "a"))
  f:write(s .. "\n")
  f:close()
end
local function watched(ip) return knock.args.watch == nil or string.find(ip, knock.args.watch, 1, true) == 1 end
function on_unlock(ev)
  ips[#ips + 1] = ev.ip
  if watched(ev.ip) then line("unlock " .. ev.ip) end
end
function on_fail(ev)
  if ev.reason == "banned" then
    bans = bans + 1
    if watched(ev.ip) then line("banned " .. ev.ip) end
  end
end
function on_stop() line("total " .. #ips); line("bans " .. bans) end
EOF
cat >"$work/service.lua" <<'EOF'
function on_start() assert(knock.serve{ port = tonumber(knock.args.port), proto = "tcp" }) end
function on_unlock(ev) end
EOF

# start NAME ARGS...: a server, its log in $work/NAME.log, its hook's output in $work/NAME.out.
start() {
  local name=$1
  shift
  rm -f "$work/$name.out"
  "$kk" "$@" --hook-arg "out=$work/$name.out" 2>"$work/$name.log" &
  srv=$!
  for _ in $(seq 200); do grep -q msg=listening "$work/$name.log" && return 0; sleep 0.05; done
  echo "attack.sh: server $name did not start:" >&2
  cat "$work/$name.log" >&2
  exit 2
}
stop() {
  kill -TERM "$srv"
  wait "$srv" 2>/dev/null
  srv=
}
now() { date +%s%N; }
# count NAME KIND IP: lines "KIND IP..." in NAME.out (IP may be a prefix such as 127.9.).
count() { grep -c "^$2 $3" "$work/$1.out" 2>/dev/null; }
# field NAME KEY: KEY=VALUE of the server's stopped line.
field() { grep 'msg=stopped' "$work/$1.log" | grep -o " $2=[^ ]*" | head -1 | cut -d= -f2; }
# shed_unlocks NAME: unlocks shed by the hook queue, from the last overload line.
shed_unlocks() { grep 'hook queue full' "$work/$1.log" | tail -1 | grep -o ' unlocks=[0-9]*' | cut -d= -f2; }
hookline() { grep "^$2 " "$work/$1.out" 2>/dev/null | tail -1 | cut -d' ' -f2; }
peak_kb() { awk '/^VmHWM/ { print $2 }' "/proc/$1/status"; }
# drops PORTS: datagrams the kernel dropped at the sockets bound to PORTS (receive buffer full).
drops() {
  local hex=
  for p in ${1//,/ }; do hex="$hex $(printf '%04X' "$p")"; done
  cat /proc/net/udp /proc/net/udp6 | awk -v ports="$hex" '
    BEGIN { n = split(ports, a, " "); for (i = 1; i <= n; i++) want[a[i]] = 1 }
    NR > 1 { split($2, l, ":"); if (l[2] in want) d += $NF } END { print d + 0 }'
}
# wait_unlock NAME IP SINCE_NS: polls for IP's unlock for 5 s; prints the ms since SINCE_NS, or "never".
wait_unlock() {
  local deadline=$(($3 + 5000000000))
  while [ "$(now)" -lt $deadline ]; do
    if grep -q "^unlock $2\$" "$work/$1.out" 2>/dev/null; then
      echo $((($(now) - $3) / 1000000))
      return 0
    fi
    sleep 0.01
  done
  echo never
  return 1
}
json() { grep -o "\"$2\":[^,}]*" <<<"$1" | head -1 | cut -d: -f2 | tr -d '"'; }
mib() { echo $(($1 / 1024)); }

echo "== attack.sh: $(date -u +%FT%TZ), $(nproc) cores, $(uname -r)"

# --- 1. 100,000 spoofed complete sequences, a genuine client during them ----------------------
P=$(ports 3)
start a1 -p "$P" --hook "$work/hook.lua" --hook-arg watch=127.0.0.
"$lg" send -ports "$P" -clients 100000 -workers 1 >"$work/a1.json" &
flood=$!
sleep 0.8
"$kk" knock -p "$P" 127.0.0.1 >/dev/null
t=$(now)
lat=$(wait_unlock a1 127.0.0.1 "$t")
during=$(kill -0 $flood 2>/dev/null && echo "during the flood" || echo "after the flood ended")
wait $flood
sleep 2
d=$(drops "$P")
stop
sent=$(json "$(cat "$work/a1.json")" datagrams)
secs=$(json "$(cat "$work/a1.json")" send_seconds)
disp=$(field a1 unlocks)
shed=$(shed_unlocks a1)
shed=${shed:-0}
total=$(hookline a1 total)
want=$((sent / 3 + 1))
status=ok
{ [ "$lat" != never ] && [ "$total" = "$disp" ] && [ $((disp + shed)) -le $want ] && [ $((disp + shed + d)) -ge $want ]; } || status=FAIL
result $status "1 sequence flood" "$((sent / 3)) spoofed sequences in ${secs%.*}s + 1 genuine: hook saw $total unlocks, server dispatched $disp, shed $shed (kernel drops $d); genuine unlocked after ${lat}ms ($during)"

# --- 2. first-knock floods -----------------------------------------------------------------
P=$(ports 3)
P1=${P%%,*}
P23=${P#*,}
start a2 -p "$P" --hook "$work/hook.lua" --hook-arg watch=127.0.0.
"$kk" knock -p "$P1" 127.0.0.1 >/dev/null
f=$("$lg" send -ports "$P1" -partial -clients 70000 -workers 1)
"$kk" knock -p "$P23" 127.0.0.1 >/dev/null
t=$(now)
lat=$(wait_unlock a2 127.0.0.1 "$t")
d=$(drops "$P")
stop
status=ok
[ "$lat" != never ] || status=FAIL
result $status "2 70k between knocks" "$(json "$f" datagrams) spoofed first knocks in $(printf '%.2f' "$(json "$f" send_seconds)")s between the genuine first and second knock (kernel drops $d): genuine unlocked after ${lat}ms"

P=$(ports 3)
IFS=, read -r P1 P2 P3 <<<"$P"
start a2s -p "$P" --hook "$work/hook.lua" --hook-arg watch=127.0.0.
pid=$srv
start_kb=$(peak_kb "$pid")
"$lg" send -ports "$P1" -partial -rate 100000 -duration 10s >"$work/a2s.json" &
flood=$!
sleep 3
"$kk" knock -p "$P1" 127.0.0.1 >/dev/null
sleep 1
"$kk" knock -p "$P2" 127.0.0.1 >/dev/null
sleep 1
"$kk" knock -p "$P3" 127.0.0.1 >/dev/null
t=$(now)
lat=$(wait_unlock a2s 127.0.0.1 "$t")
wait $flood
peak=$(peak_kb "$pid")
d=$(drops "$P")
stop
f=$(cat "$work/a2s.json")
status=ok
{ [ "$lat" != never ] && [ "$peak" -lt $((64 * 1024)) ]; } || status=FAIL
result $status "2 sustained 100k/s" "$(json "$f" datagrams) spoofed first knocks in $(printf '%.1f' "$(json "$f" send_seconds)")s ($(printf '%.0f' "$(json "$f" datagrams_per_second)")/s, kernel drops $d); genuine knocks 1s apart: unlocked after ${lat}ms; peak RSS $(mib "$peak") MiB (start $(mib "$start_kb") MiB, limit 64)"

# --- 3. bans ------------------------------------------------------------------------------
wrong40() { local s= i; for i in $(seq 20); do s="$s$2,$3,"; done; echo "${s}$1,$2,$3"; } # 40 wrong knocks, then the sequence

P=$(ports 3)
IFS=, read -r P1 P2 P3 <<<"$P"
start a3 -p "$P" --ban-after 3 --hook "$work/hook.lua" --hook-arg watch=127.0.0.
f=$("$lg" send -ports "$P2" -clients 200000 -workers 1)
sleep 1.6
"$lg" send -base 127.0.0.2 -clients 1 -gap 20ms -ports "$(wrong40 "$P1" "$P2" "$P3")" >/dev/null
sleep 1.6
stop
b=$(count a3 banned "127.0.0.2$")
u=$(count a3 unlock "127.0.0.2$")
status=ok
{ [ "$b" -gt 0 ] && [ "$u" = 0 ]; } || status=FAIL
result $status "3 wrong-knock flood" "$(json "$f" datagrams) spoofed wrong knocks (1 per source), then 127.0.0.2 failed 40 times: banned $b times, unlocked $u times ($(field a3 dropped.banned) knocks dropped as banned)"

P=$(ports 4)
IFS=, read -r P1 P2 P3 D <<<"$P"
start a3b -p "$P1,$P2,$P3" --decoys "$D" --ban-after 3 --hook "$work/hook.lua" --hook-arg watch=127.0.0.
n=0
for base in 127.1.0.1 127.2.0.1; do # 40,000 sources a wave: the client table holds 65,536 attempts
  f=$("$lg" send -base $base -ports "$P2,$P3,$D" -clients 40000 -workers 1)
  n=$((n + $(json "$f" datagrams)))
  sleep 1.8
done
"$lg" send -base 127.0.0.2 -clients 1 -gap 20ms -ports "$(wrong40 "$P1" "$P2" "$P3")" >/dev/null
sleep 1.6
stop
b=$(count a3b banned "127.0.0.2$")
u=$(count a3b unlock "127.0.0.2$")
status=ok
{ [ "$b" -gt 0 ] && [ "$u" = 0 ]; } || status=FAIL
shedf=$(grep 'hook queue full' "$work/a3b.log" | tail -1 | grep -o ' fails=[0-9]*' | cut -d= -f2)
result $status "3 ban table full of bans" "$n spoofed wrong knocks (3 per source, 80,000 sources; the ban table holds 65,536): the hook saw $(($(hookline a3b bans) - b)) bans (${shedf:-0} fail events shed); then 127.0.0.2 failed 40 times: banned $b times, unlocked $u times"

P=$(ports 3)
IFS=, read -r P1 P2 P3 <<<"$P"
start a3c -p "$P" --ban-after 3 --hook "$work/hook.lua" --hook-arg watch=127.0.0.
"$lg" send -ports "$P2,$P3" -rate 100000 -duration 24s >"$work/a3c.json" &
flood=$!
sleep 3
slow=
for _ in $(seq 6); do slow="$slow$P2,$P3,"; done
"$lg" send -base 127.0.0.2 -clients 1 -gap 1500ms -ports "$slow$P" >/dev/null
wait $flood
sleep 1.6
stop
b=$(count a3c banned "127.0.0.2$")
u=$(count a3c unlock "127.0.0.2$")
status=ok
{ [ "$b" -gt 0 ] && [ "$u" = 0 ]; } || status=FAIL
result $status "3 churn by near-bans" "$(json "$(cat "$work/a3c.json")" datagrams) spoofed wrong knocks (2 per source, 100,000/s) while 127.0.0.2 failed 12 times, 1.5s apart, then knocked the sequence: banned $b times, unlocked $u times ($(grep -o 'evicted=[0-9]*' "$work/a3c.log" | cut -d= -f2 | paste -sd+ | bc) attempts evicted from the client table)"

P=$(ports 3)
IFS=, read -r P1 P2 P3 <<<"$P"
start a3d -p "$P" --ban-after 3 --hook "$work/hook.lua" --hook-arg watch=127.9.
"$lg" send -base 127.9.0.1 -clients 100 -concurrency 100 -gap 2ms -ports "$P2,$P3,$P2,$P1,$P2,$P3" >/dev/null
sleep 1.6
stop
b=$(count a3d banned 127.9.)
u=$(count a3d unlock 127.9.)
status=ok
[ "$u" = 0 ] || status=FAIL
result $status "3 sequence behind the ban" "100 addresses each failed 3 times and knocked the sequence right behind (2ms apart): $b bans, $u unlocks of banned addresses"

# --- 4. the built-in service ---------------------------------------------------------------
S=$(ports 1)
start a4 -p "$(ports 3)" --hook "$work/service.lua" --hook-arg "port=$S"
pid=$srv
for _ in $(seq 100); do grep -q 'service started' "$work/a4.log" && break; sleep 0.05; done
before=$(peak_kb "$pid")
c=$("$lg" conns -port "$S" -idle 5000 -slow 200 -hold 12s -at 1s,6s,11s)
peak=$(peak_kb "$pid")
held=$(grep -o '"open":{[^}]*}' <<<"$c" | head -1 | grep -o '[0-9]*' | paste -sd+ | bc)
held=${held:-0}
srvside=$(json "$c" server_established)
after=$(json "$c" probe_after)
samples=$(grep -o '"at":"[^"]*","open":{[^}]*}' <<<"$c" | sed 's/"at":"\([^"]*\)","open":{\([^}]*\)}/\1: \2/; s/"//g' | paste -sd';' | sed 's/;/; /g')
status=ok
{ [ "$held" -le 256 ] && [ "$peak" -lt $((64 * 1024)) ] && [ "$after" = served ]; } || status=FAIL
result $status "4 service conn flood" "5,000 idle + 200 slow-POST connections from $(json "$c" sources) addresses: held $held at 1s (server side $srvside; open by kind at $samples); RSS $(mib "$before") -> peak $(mib "$peak") MiB; a normal client after: $after"
c=$("$lg" conns -port "$S" -idle 5000 -slow 200 -hold 8s -at 1s,4s,7s -refill)
refused=$(grep -o '"probe":"[^"]*' <<<"$c" | grep -vc ':"served')
peak=$(peak_kb "$pid")
stop
status=ok
{ [ "$refused" -eq 0 ] && [ "$(json "$c" probe_after)" = served ]; } || status=FAIL
result $status "4 persistent attacker" "the same, redialling what the server closes ($(json "$c" redials) redials in 8s): a normal client from another address refused in $refused of 3 tries during the attack (a newcomer takes the place of the longest-idle connection), after: $(json "$c" probe_after); peak RSS $(mib "$peak") MiB"

# --- 5. duplicates -------------------------------------------------------------------------
P=$(ports 4)
IFS=, read -r P1 P2 P3 D <<<"$P"
start a5 -p "$P1,$P2,$P3" --decoys "$D" --hook "$work/hook.lua"
cases=("each port 5 times:${P1}x5,${P2}x5,${P3}x5" "second port 5 times, then the sequence:${P2}x5,$P1,$P2,$P3"
  "last port 5 times, then the sequence:${P3}x5,$P1,$P2,$P3" "decoy 5 times, then the sequence:${D}x5,$P1,$P2,$P3"
  "first port 5 times, then the sequence:${P1}x5,$P1,$P2,$P3")
for i in "${!cases[@]}"; do
  for trial in $(seq 0 99); do
    "$lg" send -base "127.$((40 + i)).$trial.1" -clients 10 -ports "${cases[$i]#*:}" >/dev/null
  done
done
sleep 1.6
stop
for i in "${!cases[@]}"; do
  per=$(grep "^unlock 127.$((40 + i))\." "$work/a5.out" | awk '{ split($2, a, "."); n[a[3]]++; u++ } END { for (t in n) if (n[t] == 10) full++; print u + 0, full + 0 }')
  read -r u full <<<"$per"
  status=ok
  [ "$u" = 1000 ] || status=FAIL
  result $status "5 duplicates" "${cases[$i]%%:*}: $full of 100 trials all unlocked, $u of 1,000 clients"
done

# --- IPv6 bans, allow="clients", the hook timeout: from attack_test.go --------------------------
if go test -c -o "$work/attack.test" . >"$work/test-build.log" 2>&1; then
  "$work/attack.test" -test.count=1 -test.v -test.run '^(TestAttackIPv6BanCoversThePrefix|TestAttackServiceAllowClientsResetsStrangers|TestAttackExecTimeoutSurvivors)$' >"$work/tests.log" 2>&1
  verdict() { grep -q -- "--- PASS: $1 " "$work/tests.log" && echo ok || echo FAIL; }
  line=$(grep -o 'banned 2001:db8:1::a;.*' "$work/tests.log" | head -1)
  result "$(verdict TestAttackIPv6BanCoversThePrefix)" "3 IPv6 /64 rotation" "${line:-no result (see go test -run TestAttackIPv6BanCoversThePrefix)}"
  line=$(grep -o "a stranger's connection:.*" "$work/tests.log" | head -1)
  result "$(verdict TestAttackServiceAllowClientsResetsStrangers)" '4 allow="clients"' "${line:-no result}; a scan sees the port open"
  outlive=$(grep -E '^\s+attack_test.go:[0-9]+: \S+ +(cancelled|returned) ' "$work/tests.log" | sed -E 's/^\s+attack_test.go:[0-9]+: //; s/ +/ /g' | paste -sd';' | sed 's/;/; /g')
  result "$(verdict TestAttackExecTimeoutSurvivors)" "6 exec at the hook timeout" "${outlive:-no result}"
else
  result FAIL "3/4/6 from attack_test.go" "the test binary does not build: $(head -3 "$work/test-build.log" | tr '\n' ' ')"
fi

echo "== $failures attack(s) succeeded"
[ "$failures" -eq 0 ]
