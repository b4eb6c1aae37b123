#!/usr/bin/env bash
# bench.sh: knockknock against a bare UDP sink (the ceiling: it only counts datagrams) and knockd,
# on the same loads from distinct loopback addresses (127.1.0.1 and up):
#   burst     100,000 clients, no gap between knocks
#   paced-16    2,000 clients, 2 ms gap, 16 in flight
#   paced-64   10,000 clients, 2 ms gap, 64 in flight
# It prints the table and the ratios, and writes bench-out/ (logs, results.json, bench.png).
# Linux, as root (knockd captures packets); installs knockd and gnuplot with apt-get if missing.
#
#   scripts/bench.sh [CASE,...]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${BENCH_OUT:-bench-out}
mkdir -p "$out"

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  missing=
  command -v knockd >/dev/null || missing="$missing knockd"
  command -v gnuplot >/dev/null || missing="$missing gnuplot-nox"
  if [ -n "$missing" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
fi

go build -o "$out/knockknock" knockknock.go
go build -o "$out/loadgen" ./scripts/loadgen
knockd_bin=
if [ "$(id -u)" -eq 0 ] && command -v knockd >/dev/null; then
  knockd_bin=$(command -v knockd)
else
  echo "knockd skipped: it needs root and the knockd package" >&2
fi

echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2/1048576 }' /proc/meminfo), $(uname -sr), $(go version | cut -d' ' -f3)"
"$out/loadgen" bench -knockknock "$out/knockknock" -knockd "$knockd_bin" -out "$out" -cases "${1:-}"

if command -v gnuplot >/dev/null; then
  gnuplot <<EOT
set terminal pngcairo size 1100,480 font ",10"
set output "$out/bench.png"
set multiplot layout 1,2 title "knock servers on loopback (2 ms gap at 2,000 and 10,000 clients, no gap at 100,000)"
set logscale x
set xlabel "clients"
set key top left
set grid
set logscale y
set ylabel "unlocks per second"
plot for [s in "sink knockknock knockd"] "$out/".s.".dat" using 1:2 with linespoints lw 2 title s
unset logscale y
set yrange [0:105]
set ylabel "sequences unlocked (%)"
set key center right
plot for [s in "sink knockknock knockd"] "$out/".s.".dat" using 1:3 with linespoints lw 2 title s
unset multiplot
EOT
  echo "plot: $out/bench.png"
fi
