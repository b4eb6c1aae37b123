#!/usr/bin/env bash
# grant-rate.sh: how fast each firewall hook grants, and how long a genuine client waits for its
# grant while spoofed unlocks flood the server. Linux, as root. Everything runs in two network
# namespaces, kkfw-gr-srv and kkfw-gr-cli, joined by a veth pair with documentation addresses
# (192.0.2.1, 192.0.2.2); they are removed at the end. For hooks/nftables.lua and
# hooks/iptables.lua in turn:
#
#  1. grant rate: knockknock guards port 2222 with the hook (access time 600 s, so nothing expires
#     during the count) and listens on three UDP ports; loadgen sends N complete sequences from N
#     spoofed loopback sources (127.1.0.1 and up) inside the server namespace. The figure is N
#     divided by the time from loadgen's first datagram to the moment the last of the N addresses
#     was in the kernel (the hook logs each batch once it is applied; the script then counts the
#     nft set or the xt_recent tables). The iptables hook gets enough recent tables for N
#     (--hook-arg tables=N/ip_list_tot): by default it keeps fewer (see its header).
#  2. latency under a flood: a fresh knockknock (access time 30 s); loadgen sends FLOOD complete
#     spoofed sequences; half a second in, a genuine client in the other namespace knocks with
#     `knockknock knock` and then tries to connect every few milliseconds. The figure is the time
#     from its last knock to its first connection (target: 5 s). The iptables hook runs this with
#     its default tables=64, then with enough tables for the whole flood.
#
#   scripts/grant-rate.sh [N] [FLOOD]      (defaults: 20000 and 100000; about a minute)
#   KEEP_LOGS=DIR scripts/grant-rate.sh    keeps the flood runs' server logs in DIR
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
flood=${2:-100000}
ports=41001,41003,41002
protected=2222
srv=kkfw-gr-srv
cli=kkfw-gr-cli
[ "$(id -u)" -eq 0 ] || { echo "grant-rate.sh: run as root (network namespaces, nft, iptables)" >&2; exit 2; }
work=$(mktemp -d /tmp/kkfw-grant-rate.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$srv" 2>/dev/null || true
  ip netns del "$cli" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

go build -o "$work/knockknock" knockknock.go
go build -o "$work/loadgen" ./scripts/loadgen
kk=$work/knockknock

ip netns del "$srv" 2>/dev/null || true
ip netns del "$cli" 2>/dev/null || true
ip netns add "$srv"
ip netns add "$cli"
ip link add kkfw-gr-s netns "$srv" type veth peer name kkfw-gr-c netns "$cli"
ip -n "$srv" link set lo up
ip -n "$cli" link set lo up
ip -n "$srv" addr add 192.0.2.1/24 dev kkfw-gr-s
ip -n "$cli" addr add 192.0.2.2/24 dev kkfw-gr-c
ip -n "$srv" link set kkfw-gr-s up
ip -n "$cli" link set kkfw-gr-c up

# The protected service: knockknock's own HTTP service on 2222, from a tiny hook.
printf 'function on_unlock(ev) end\nfunction on_start() assert(knock.serve{port=%d, proto="tcp"}) end\n' $protected >"$work/service.lua"
ip netns exec "$srv" "$kk" -p 3001 --hook "$work/service.lua" 2>"$work/service.log" &
pids+=($!)

# wait_log FILE TEXT: wait up to 10 s for TEXT in FILE.
wait_log() {
  for _ in $(seq 200); do grep -q "$2" "$1" && return 0; sleep 0.05; done
  echo "grant-rate.sh: no \"$2\" in $1:" >&2; cat "$1" >&2; exit 1
}
wait_log "$work/service.log" "service started"
if ip netns exec "$cli" curl -s --max-time 2 -o /dev/null "http://192.0.2.1:$protected/"; then :; else
  echo "grant-rate.sh: the service is not reachable before any hook" >&2; exit 1
fi

server_pid=
# start_server LOG HOOK ARG...: knockknock with a hook in the server namespace.
start_server() {
  local log=$1; shift
  ip netns exec "$srv" "$kk" -p "$ports" --hook "$@" 2>"$log" &
  server_pid=$!
  pids+=("$server_pid")
  wait_log "$log" "port closed"
}
# stop_server HOOK: stop knockknock, then remove the rules that the hook leaves in place on
# purpose (the port stays closed after a stop), as its header says, so the next run starts clean.
stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  case $1 in
    *nftables*) ip netns exec "$srv" nft delete table inet knockknock ;;
    *iptables*)
      for tool in iptables ip6tables; do
        ip netns exec "$srv" $tool -D INPUT -p tcp --dport $protected -m conntrack --ctstate NEW -j knockknock
        ip netns exec "$srv" $tool -F knockknock
        ip netns exec "$srv" $tool -X knockknock
      done ;;
  esac
}

# granted HOOK: how many IPv4 addresses the hook has in the kernel.
granted() {
  case $1 in
    *nftables*) ip netns exec "$srv" nft list set inet knockknock allowed4 | grep -o ' expires ' | wc -l ;;
    *iptables*) ip netns exec "$srv" sh -c 'cat /proc/net/xt_recent/knockknock-v4-* | wc -l' ;;
  esac
}

# last_grant_ns FILE: the time of the last "access granted" line in FILE, in unix nanoseconds.
last_grant_ns() {
  local ts
  ts=$(grep 'access granted' "$1" | tail -1 | sed 's/^time=\([^ ]*\).*/\1/')
  date -d "$ts" +%s%N
}

json_field() { sed 's/.*"'"$2"'":\([0-9.]*\).*/\1/' "$1"; }

per_table=$(cat /sys/module/xt_recent/parameters/ip_list_tot 2>/dev/null || echo 100)
tables_for() { local t=$(( ($1 + per_table - 1) / per_table )); [ "$t" -le 1024 ] || t=1024; echo "$t"; }

echo "machine: $(nproc) cores, $(uname -sr), $(nft --version 2>/dev/null | cut -d' ' -f1,2), $(iptables --version); xt_recent ip_list_tot=$per_table"

# rate HOOK ARG...: phase 1.
rate() {
  local hook=$1; shift
  local log=$work/rate.log
  start_server "$log" "$hook" --hook-arg port=$protected --hook-arg seconds=600 "$@"
  ip netns exec "$srv" "$work/loadgen" send -ports "$ports" -clients "$n" >"$work/send.json"
  local count=0
  for _ in $(seq 240); do
    count=$(granted "$hook")
    [ "$count" -ge "$n" ] && break
    sleep 0.5
  done
  local first last
  first=$(json_field "$work/send.json" start_unix_ns)
  last=$(last_grant_ns "$log")
  awk -v h="$hook" -v a="$*" -v n="$n" -v c="$count" -v s="$(json_field "$work/send.json" send_seconds)" -v f="$first" -v l="$last" 'BEGIN {
    d = (l - f) / 1e9
    printf "%-20s %-22s %6d addresses granted of %d sent (sent in %.2f s), the last in the kernel %.2f s after the first datagram: %.0f addresses/s\n", h, a, c, n, s, d, c / d }'
  stop_server "$hook"
  [ "$count" -ge "$n" ] || echo "  (not all $n addresses were granted: knocks lost or hook errors; see the counts above)"
}

# latency HOOK ARG...: phase 2.
latency() {
  local hook=$1; shift
  local log=$work/flood.log
  start_server "$log" "$hook" --hook-arg port=$protected --hook-arg seconds=30 "$@"
  ip netns exec "$srv" "$work/loadgen" send -ports "$ports" -clients "$flood" >"$work/flood.json" &
  local loadgen=$!
  sleep 0.5
  ip netns exec "$cli" "$kk" knock -4 -p "$ports" 192.0.2.1 >/dev/null
  local knocked connected result unlocked=?
  knocked=$(date +%s%N)
  if ip netns exec "$cli" timeout 30 sh -c "until curl -s --max-time 0.1 -o /dev/null http://192.0.2.1:$protected/; do sleep 0.005; done"; then
    connected=$(date +%s%N)
    unlocked=$(grep -c 'msg=unlock' "$log" || true)
    result=$(awk -v k="$knocked" -v c="$connected" 'BEGIN { printf "connected %.2f s after its last knock", (c - k) / 1e9 }')
  else
    result="NOT connected within 30 s of its last knock"
  fi
  wait "$loadgen"
  stop_server "$hook"
  [ -z "${KEEP_LOGS:-}" ] || cp "$log" "$KEEP_LOGS/$(basename "$hook" .lua)-$#.log"
  local shed
  shed=$(grep -o 'hook_events_shed=[0-9]*' "$log" | cut -d= -f2)
  printf '%-20s %-22s genuine client %s (flood: %d sequences sent in %.2f s, %s unlocks handled by then, %s hook events shed)\n' \
    "$hook" "$*" "$result" "$flood" "$(json_field "$work/flood.json" send_seconds)" "$unlocked" "${shed:-?}"
}

echo "== grant rate: $n spoofed complete sequences"
rate hooks/nftables.lua
rate hooks/iptables.lua --hook-arg tables="$(tables_for "$n")"
echo "== a genuine knock during a flood of $flood spoofed complete sequences"
latency hooks/nftables.lua
latency hooks/iptables.lua
latency hooks/iptables.lua --hook-arg tables="$(tables_for "$flood")"
