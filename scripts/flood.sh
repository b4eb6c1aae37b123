#!/usr/bin/env bash
# flood.sh: the bounded-state figure. 200,000 spoofed sources (127.1.0.1 and up, loopback only)
# each send the first knock of the sequence; then a legitimate client knocks from 127.0.0.1. It
# reports the server's peak RSS (VmHWM) and whether the legitimate client unlocked right after,
# for two hooks: hooks/log-only.lua (no on_knock: the knock path only) and testdata/record.lua
# (on_knock writes every knock to a file: the hook runtime under load too). Fails over 64 MiB.
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

flood() { # HOOK
  "$work/knockknock" -p "$ports" --hook "$1" --hook-arg "out=$work/events" 2>"$work/server.log" &
  pid=$!
  for _ in $(seq 100); do grep -q msg=listening "$work/server.log" && break; sleep 0.05; done
  local start peak
  start=$(awk '/^VmHWM/ { print $2 }' "/proc/$pid/status")
  "$work/loadgen" send -ports "$ports" -clients "$clients" -partial >"$work/flood.json"
  "$work/knockknock" knock -p "$ports" 127.0.0.1 >/dev/null
  for _ in $(seq 100); do grep -q 'msg=unlock.* ip=127.0.0.1 ' "$work/server.log" && break; sleep 0.05; done
  peak=$(awk '/^VmHWM/ { print $2 }' "/proc/$pid/status")
  kill "$pid"; wait "$pid" || true; pid=
  printf '%-20s %d spoofed sources in %.2fs: peak RSS %d MiB (at start %d MiB); ' "$1" "$clients" \
    "$(sed 's/.*"send_seconds":\([0-9.]*\).*/\1/' "$work/flood.json")" $((peak / 1024)) $((start / 1024))
  if grep -q 'msg=unlock.* ip=127.0.0.1 ' "$work/server.log"; then
    echo "legitimate client unlocked right after"
  else
    echo "legitimate client NOT unlocked"; return 1
  fi
  [ "$peak" -lt $((64 * 1024)) ] || { echo "peak RSS over 64 MiB"; return 1; }
}

flood hooks/log-only.lua
flood testdata/record.lua
echo "ok: under 64 MiB"
