#!/usr/bin/env bash
# flood.sh: the bounded-state figure. 200,000 spoofed sources (127.1.0.1 and up, loopback only)
# each send the first knock of the sequence; then a legitimate client knocks from 127.0.0.1. It
# reports the server's peak RSS (VmHWM) and whether the legitimate client unlocked right after.
#
#   scripts/flood.sh [CLIENTS]        (default 200000; Linux)
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-200000}
ports=41123,41456,41789
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

go build -o "$work/knockknock" knockknock.go
go build -o "$work/loadgen" ./scripts/loadgen
"$work/knockknock" -p "$ports" --hook testdata/record.lua --hook-arg "out=$work/events" 2>"$work/server.log" &
pid=$!
for _ in $(seq 100); do grep -q msg=listening "$work/server.log" && break; sleep 0.05; done
rss() { awk '/^VmHWM/ { print $2 }' "/proc/$pid/status"; }
echo "server pid $pid, peak RSS at start: $(( $(rss) / 1024 )) MiB"

"$work/loadgen" send -ports "$ports" -clients "$clients" -partial >"$work/flood.json"
echo "flood: $(cat "$work/flood.json")"
"$work/knockknock" knock -p "$ports" 127.0.0.1 >/dev/null
for _ in $(seq 100); do grep -q '^unlock ip=127.0.0.1 ' "$work/events" 2>/dev/null && break; sleep 0.05; done
peak=$(rss)
echo "peak RSS after $clients spoofed sources: $(( peak / 1024 )) MiB (VmHWM $peak kB)"
if grep -q '^unlock ip=127.0.0.1 ' "$work/events" 2>/dev/null; then
  echo "legitimate client: unlocked right after the flood"
else
  echo "legitimate client: NOT unlocked"; exit 1
fi
[ "$peak" -lt $((64 * 1024)) ] || { echo "peak RSS over 64 MiB"; exit 1; }
echo "ok: under 64 MiB"
