#!/usr/bin/env bash
# demo.sh: the original port-knocking demonstration, checked step by step.
#
#   scan before -> wrong order (locked) -> knock interrupted by the timeout (locked)
#   -> correct knock -> scan after (8080 open, knock ports closed) -> a request to 8080
#   -> as root, capture mode: a second server whose knock ports (TCP and UDP) scan like every
#      other closed port, unlocked by a TCP knock -> a request to its service on 8081
#
# First it checks that no other process holds a port it needs (UDP or TCP); if one does, it says
# which port and which process, and exits 1 having started nothing.
#
# It builds knockknock once, starts it with the default hook, and stops it on any exit. Each step
# is checked; the first that does not hold ends the demo with a non-zero exit. It uses nmap where
# installed and falls back to ss. Ports 123, 456 and 789 need root; as another user the demo
# knocks on 10123, 10456 and 10789 instead.
#
# The scans never unlock by themselves: each nmap run scans one port, in an order that cannot
# complete the sequence (see "A scan can knock" in README.md).
set -Eeuo pipefail
cd "$(dirname "$0")"

host=127.0.0.1
service=8080
timeout=2
if [ "$(id -u)" -eq 0 ]; then
  k1=123 k2=456 k3=789
else
  k1=10123 k2=10456 k3=10789
  echo "(not root: knocking on $k1,$k2,$k3 instead of 123,456,789)"
fi
ports="$k1,$k2,$k3"
c1=7000 c2=9000 c3=8000 unused=7500 cservice=8081 # capture mode (root): knock ports, a port no door uses, its service

# Before anything starts: every port the demo uses must be free, UDP and TCP. A port held by
# another process (a server left running from an earlier try, say) would make a step fail in a
# way that reads as if the demo's own server were at fault.
needed="$k1 $k2 $k3 $service"
[ "$(id -u)" -eq 0 ] && needed="$needed $c1 $c2 $c3 $unused $cservice"
if command -v ss >/dev/null 2>&1; then
  held=() pids=() first=
  for port in $needed; do
    for proto in udp tcp; do
      line=$(ss -Hln"${proto:0:1}"p "sport = :$port" 2>/dev/null | head -1) || true
      [ -n "$line" ] || continue
      first=${first:-$port}
      user=$(grep -o 'users:(("[^"]*",pid=[0-9]*' <<<"$line" | head -1) || true
      if [ -n "$user" ]; then
        name=${user#*\"} name=${name%%\"*} pid=${user##*pid=}
        held+=("$(printf '%-9s held by %s (pid %s)' "$port/$proto" "$name" "$pid")")
        pids+=("$pid")
      else
        held+=("$(printf '%-9s held by a process that ss names only to root' "$port/$proto")")
      fi
    done
  done
  if [ ${#held[@]} -gt 0 ]; then
    {
      echo "demo.sh: another process holds ports the demo needs; the demo has started nothing:"
      printf '   %s\n' "${held[@]}"
      if [ ${#pids[@]} -gt 0 ]; then
        echo "Stop it (kill $(printf '%s\n' "${pids[@]}" | sort -un | paste -sd ' ')) and run ./demo.sh again."
      fi
      echo "To see what holds a port: ss -lntup 'sport = :$first' (as root, to see the process)."
      echo "The demo needs these ports free, UDP and TCP: ${needed// /,}."
    } >&2
    exit 1
  fi
else
  echo "(ss is not installed: cannot check beforehand that ports ${needed// /,} are free)"
fi

work=$(mktemp -d)
server_pid=
capture_pid=
cleanup() {
  for pid in $server_pid $capture_pid; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'fail "unexpected error at demo.sh line $LINENO"' ERR

step() { printf '\n== %s\n' "$*"; }
say() { printf '   %s\n' "$*"; }
fail() {
  printf '\nFAILED: %s\n' "$*" >&2
  for log in server capture; do
    if [ -f "$work/$log.log" ]; then
      printf -- '--- %s log\n' "$log" >&2
      cat "$work/$log.log" >&2
    fi
  done
  exit 1
}

# state PORT: the state of UDP PORT as a scanner sees it: open, closed or open|filtered.
if command -v nmap >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then # nmap -sU needs root
  scanner="nmap -sU (one port per run)"
  state() {
    nmap -n -Pn -sU -p "$1" "$host" 2>/dev/null | awk -v p="$1/udp" '$1 == p { print $2 }'
  }
else
  scanner="ss (nmap -sU needs nmap and root)"
  # ss sees sockets, not what the network sees: a bound knock port is what nmap calls open|filtered.
  state() {
    if ss -Hlnu "sport = :$1" | grep -q .; then
      if [ "$1" = "$service" ]; then echo open; else echo "open|filtered"; fi
    else
      echo closed
    fi
  }
fi

expect_state() { # PORT WANT
  local got
  got=$(state "$1")
  say "$(printf '%-6s %s' "$1/udp" "$got")"
  [ "$got" = "$2" ] || fail "port $1 is ${got:-unknown}, expected $2"
}

locked() {
  if curl -s --max-time 2 "http://$host:$service/" >/dev/null 2>&1; then
    fail "port $service answers: the server unlocked when it should not have"
  fi
  say "http://$host:$service/ refuses the connection: still locked"
}

# expect_failure REASON: wait for the server to report a new failed attempt with REASON, and show
# it. (A failure is final one second after the knock, when no reordered knock can rescue it.)
declare -A reported
expect_failure() {
  local reason=$1 line=
  for _ in $(seq 60); do
    line=$(grep "reason=$reason" "$work/server.log" | tail -n +$((${reported[$reason]:-0} + 1)) | head -1) || true
    [ -n "$line" ] && break
    sleep 0.05
  done
  [ -n "$line" ] || fail "the server reported no $reason failure"
  reported[$reason]=$(grep -c "reason=$reason" "$work/server.log")
  say "server: ${line#*msg=}"
}

knock() { # PORT...
  say "knock $*"
  "$work/knockknock" knock --delay 50ms "$host" "$@" >/dev/null
}

step "Build"
go build -o "$work/knockknock" knockknock.go
say "built knockknock"

step "Start the server: knock ports $ports, timeout ${timeout}s, default hook"
"$work/knockknock" --ports "$ports" --timeout "$timeout" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  grep -q 'msg=listening' "$work/server.log" && break
  kill -0 "$server_pid" 2>/dev/null || fail "the server did not start"
  sleep 0.05
done
grep -q 'msg=listening' "$work/server.log" || fail "the server is not listening"
say "listening (pid $server_pid)"

step "Scan before the knock, with $scanner"
expect_state "$service" closed
expect_state "$k3" "open|filtered"
expect_state "$k2" "open|filtered"
expect_state "$k1" "open|filtered"

step "Knock in the wrong order: $k1, $k3, $k2"
knock "$k1" "$k3" "$k2"
expect_failure wrong_port
locked

step "Knock interrupted by the timeout: $k1, $k2, a pause of $((timeout + 1))s, then $k3"
knock "$k1" "$k2"
say "(waiting $((timeout + 1))s)"
sleep $((timeout + 1))
knock "$k3"
expect_failure timeout
locked

step "Knock correctly: $k1, $k2, $k3"
knock "$k1" "$k2" "$k3"
for _ in $(seq 50); do
  grep -q 'msg="knock ports closed"' "$work/server.log" && break
  sleep 0.05
done
grep -q 'msg="knock ports closed"' "$work/server.log" || fail "the correct knock did not unlock"
say "unlocked: $(grep -m1 'msg=unlock' "$work/server.log" | sed 's/.*msg=unlock //')"

step "Scan after the knock, with $scanner"
expect_state "$k1" closed
expect_state "$k2" closed
expect_state "$k3" closed
expect_state "$service" open

step "Request the main service"
say "curl http://$host:$service/"
reply=$(curl -s --max-time 5 "http://$host:$service/") || fail "no answer from port $service"
say "$reply"
case "$reply" in *"$host"*) ;; *) fail "unexpected answer: $reply" ;; esac

# Capture mode needs CAP_NET_RAW: as root only. The second server reads its knocks from raw
# sockets, binds nothing, and leaves the kernel to answer its knock ports as it answers any
# closed port; knockd's TCP knock client (or knockknock's) opens it.
if [ "$(id -u)" -eq 0 ]; then
  step "Capture mode (root): a second server, knock ports $c1/tcp, $c2/udp, $c3/tcp, service on $cservice"
  "$work/knockknock" --capture --door "ssh=$c1:tcp,$c2:udp,$c3:tcp" --hook-arg "port=$cservice" >"$work/capture.log" 2>&1 &
  capture_pid=$!
  for _ in $(seq 100); do
    grep -q 'msg=listening' "$work/capture.log" && break
    kill -0 "$capture_pid" 2>/dev/null || fail "the capture server did not start"
    sleep 0.05
  done
  grep -q 'msg=listening' "$work/capture.log" || fail "the capture server is not listening"
  say "listening (pid $capture_pid): $(grep -m1 -o 'mode=capture' "$work/capture.log")"

  if command -v nmap >/dev/null 2>&1; then
    step "Scan before the knock, with nmap -sS and -sU (one port per run, the sequence backwards)"
    cstate() { # PORT tcp|udp
      local flag=-sU
      [ "$2" = tcp ] && flag=-sS
      nmap -n -Pn "$flag" -p "$1" "$host" 2>/dev/null | awk -v p="$1/$2" '$1 == p { print $2 }'
    }
    for probe in "$unused tcp" "$unused udp" "$c3 tcp" "$c2 udp" "$c1 tcp"; do
      set -- $probe
      got=$(cstate "$1" "$2")
      role="knock port"
      [ "$1" = "$unused" ] && role="unused"
      say "$(printf '%-9s %-7s (%s)' "$1/$2" "$got" "$role")"
      [ "$got" = closed ] || fail "$1/$2 is ${got:-unknown}: a knock port must look like every other closed port"
    done
  else
    step "Before the knock, with ss (nmap is not installed): nothing is bound on the knock ports"
    if ss -Hlntu "( sport = :$c1 or sport = :$c2 or sport = :$c3 )" | grep -q .; then
      fail "a socket is bound on a knock port"
    fi
    say "no socket on $c1, $c2 or $c3: the kernel answers them as closed ports"
  fi
  if grep -q 'msg=unlock' "$work/capture.log"; then
    fail "the scans unlocked the capture server"
  fi
  say "the scans did not unlock it"

  if knockd_knock=$(type -P knock); then # not the knock function above
    step "Knock over TCP with knockd's client: knock $host $c1 $c2:udp $c3"
    "$knockd_knock" "$host" "$c1" "$c2:udp" "$c3" >/dev/null
  else
    step "Knock over TCP with knockknock's client (knockd's is not installed): $c1:tcp $c2 $c3:tcp"
    "$work/knockknock" knock "$host" "$c1:tcp" "$c2" "$c3:tcp" >/dev/null
  fi
  for _ in $(seq 50); do
    grep -q 'msg="service started"' "$work/capture.log" && break
    sleep 0.05
  done
  grep -q 'msg="service started"' "$work/capture.log" || fail "the TCP knock did not unlock the capture server"
  say "unlocked: $(grep -m1 'msg=unlock' "$work/capture.log" | sed 's/.*msg=unlock //')"
  reply=$(curl -s --max-time 5 "http://$host:$cservice/") || fail "no answer from port $cservice"
  say "curl http://$host:$cservice/: $reply"
  case "$reply" in *"$host"*) ;; *) fail "unexpected answer: $reply" ;; esac
fi

step "Done: every step held"
