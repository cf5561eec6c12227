#!/bin/sh
# Instructions per ping-pong round trip in one bench-echo server process,
# user space only: callgrind on "bench-echo -S SERVER", driven by the
# client twice (N and 5N round trips, each after a warm-up round of the
# same size); the difference of the two totals divided by the difference of
# the round trips leaves start-up and shut-down out.
#   sh bench/echo-count.sh [BUILD_DIR] [SERVER...]   (default: build; weft libuv raw)
# Needs valgrind (apt-get install -y valgrind).
set -e
build=${1:-build}
[ $# -gt 0 ] && shift
servers=${*:-weft libuv raw}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
total() { # server, round trips per round
	port=$((40000 + $$ % 10000))
	valgrind --tool=callgrind --callgrind-out-file="$tmp/cg" "$build/bench/bench-echo" -S "$1" -p "$port" \
		>/dev/null 2>&1 &
	vg=$!
	sleep 3
	"$build/bench/bench-echo" -C "$port" -t pp1 -r 1 -n "$2" -q >/dev/null
	kill -INT "$vg"
	wait "$vg" || true
	callgrind_annotate "$tmp/cg" | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}
for s in $servers; do
	a=$(total "$s" 10000)
	b=$(total "$s" 50000)
	echo "$s: $(( (b - a) / 80000 )) instructions per round trip"
done
