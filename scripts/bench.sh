#!/usr/bin/env bash
# bench.sh: the cost per knock against the floor (issue 8, item 5). One burst of 100,000 clients
# with no gap (3 knocks each: 300,000 datagrams from 127.1.0.1 + i), received by
#   socket mode:  a bare UDP sink (the floor) | knockknock, no-op hook, text logs | knockknock,
#                 JSON logs and a hook that appends a line per unlock to a file it keeps open,
#                 one write each ("all-in") | the same, opening and closing the file each time
#                 ("reopen")
#   capture mode: a bare raw sink (ip4:udp behind knockknock's BPF filter) | the same three
#                 knockknock cases with --capture
# each started in the load generator's session ("plain") and in its own ("setsid", as a daemon
# runs), 5 runs each, interleaved. It prints the receivers' CPU (user + system from /proc), the
# ratios to the matching sink, the sender check (the same burst with the sender slowed), the
# prequeued runs (no wake-ups at all), drops, and writes $BENCH_OUT (default bench-out/):
# runs.jsonl, summary.json, table.txt, gobench.txt, bench.png. About 10 minutes on an idle
# machine; a run that other processes disturb is repeated, so longer on a busy one.
#
#   scripts/bench.sh [loadgen bench flags...]     e.g. -reps 3, -cases socket-sink,socket-noop
#   BENCH_DOCS=1 scripts/bench.sh                 also copies the plot to docs/bench.png
#   BENCH_KNOCKD=1 scripts/bench.sh               adds knockd (capture, one run per launch style)
#   BENCH_PROFILE=1 scripts/bench.sh              instead: perf profiles of one burst per case,
#                                                 and where knockknock's CPU goes, by component
#
# Linux, as root (raw sockets, SO_RCVBUFFORCE); installs gnuplot (and knockd, linux-perf when
# asked) with apt-get if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${BENCH_OUT:-bench-out}
mkdir -p "$out"

if [ "$(id -u)" -ne 0 ]; then
  echo "bench.sh: run as root (capture mode needs raw sockets)" >&2
  exit 2
fi
missing=
command -v gnuplot >/dev/null || missing="$missing gnuplot-nox"
if [ "${BENCH_KNOCKD:-}" = 1 ]; then command -v knockd >/dev/null || missing="$missing knockd"; fi
if [ "${BENCH_PROFILE:-}" = 1 ]; then command -v perf >/dev/null || missing="$missing linux-perf"; fi
if [ -n "$missing" ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# The server is built fresh for every run: knockknock.go changes while we measure.
for try in 1 2 3 4 5; do
  go build -o "$out/knockknock" knockknock.go && break
  [ "$try" = 5 ] && exit 1
  echo "bench.sh: knockknock.go does not build (someone is editing it?); again in 60 s" >&2
  sleep 60
done
go build -o "$out/loadgen" ./scripts/loadgen

{
  echo "machine: $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/MemTotal/ { printf "%.0f GiB", $2/1048576 }' /proc/meminfo), $(uname -sr), $(go version | cut -d' ' -f3), HZ $(getconf CLK_TCK) ticks in /proc, sched_autogroup_enabled=$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo ?), rmem_max=$(cat /proc/sys/net/core/rmem_max)"
  echo "knockknock.go: sha256 $(sha256sum knockknock.go | cut -c1-12), commit $(git rev-parse --short HEAD 2>/dev/null || echo ?)$(git diff --quiet HEAD -- knockknock.go 2>/dev/null || echo ' + uncommitted changes'), built $(date -u +%FT%TZ)"
} | tee "$out/machine.txt"

if [ "${BENCH_PROFILE:-}" = 1 ]; then
  "$out/loadgen" bench -knockknock "$out/knockknock" -out "$out" -nice "${BENCH_NICE:--20}" -profile "$out/perf" \
    -cases socket-noop,socket-allin,capture-noop,capture-allin -styles setsid "$@"
  for f in "$out"/perf/*.perf.data; do
    echo
    echo "== $(basename "$f" .perf.data): where the CPU goes (perf samples by component; per unlock: / 100,000)"
    perf script -i "$f" -F ip,sym --no-inline 2>/dev/null | "$out/loadgen" bench perf-components
  done
  exit 0
fi

# No allocation per knock: the tracker and the listener loop.
if go test -run '^$' -bench 'KnockTracker|KnockListener' -benchmem . >"$out/gobench.txt" 2>&1; then
  grep -E '^Benchmark' "$out/gobench.txt"
  if awk '/^Benchmark/ && / allocs\/op/ { for (i = 2; i <= NF; i++) if ($(i) == "allocs/op" && $(i-1) != 0) bad = 1 } END { exit bad }' "$out/gobench.txt"; then
    echo "allocations per knock: 0 in every benchmark above"
  else
    echo "allocations per knock: NOT 0 (see above)"
  fi
else
  echo "go test benchmarks failed (see $out/gobench.txt); going on" >&2
fi
echo

knockd=()
if [ "${BENCH_KNOCKD:-}" = 1 ] && command -v knockd >/dev/null; then
  knockd=(-knockd "$(command -v knockd)")
fi
status=0
# Other sessions build and test on this machine: -nice -20 gives this session's autogroup, and
# each receiver's, the weight that keeps them from being pushed off the cores mid-run (the
# sender and the receivers weigh the same against each other as at nice 0). BENCH_NICE=0: off.
"$out/loadgen" bench -knockknock "$out/knockknock" -out "$out" -nice "${BENCH_NICE:--20}" "${knockd[@]}" "$@" | tee "$out/table.txt" || status=$?

if command -v gnuplot >/dev/null && [ -s "$out/cpu.dat" ]; then
  titles=$(sed -n 's/^# titles: //p' "$out/cpu.dat")
  gnuplot <<EOT
set terminal pngcairo size 1200,560 font ",10"
set output "$out/bench.png"
set title "Receiver CPU for one burst of 100,000 clients x 3 knocks (300,000 datagrams): median of the runs, bars min-max;\nlabels: the ratio to the sink of the same mode, launch and load"
set style data histogram
set style histogram errorbars gap 1.5 lw 1
set style fill solid 0.8 border -1
set ylabel "receiver CPU seconds (user + system)"
set yrange [0:*]
set grid ytics
set key top left
set xtics scale 0 noenhanced
titles = "$titles"
n = words(titles)
w = 1.0 / (n + 1.5)
plot for [i=1:n] "$out/cpu.dat" using (column(4*i-2)):(column(4*i-1)):(column(4*i)):xtic(1) title word(titles, i) noenhanced, \
     for [i=1:n] "" using (\$0 + (i - 1 - (n - 1) / 2.0) * w):(column(4*i) + 0.1):(sprintf("%.2fx", column(4*i+1))) with labels notitle font ",8"
EOT
  echo "plot: $out/bench.png"
  if [ "${BENCH_DOCS:-}" = 1 ]; then cp "$out/bench.png" docs/bench.png; fi
fi
exit $status
