#!/bin/sh
# User-space instructions per round trip of bench-fdpass, raw and weft,
# client and server, counted with callgrind (exact, unlike the timings).
#
#   sh bench/fdpass/count.sh [bench-fdpass binary] [round trips per round]
#
# Each implementation runs alone (-s) for one warm-up and one measured round
# (-r 1).  Callgrind collects only inside the four timed_* functions of the
# benchmark, so start-up, connecting and the fork are left out; valgrind
# follows the forked servers and writes one file per process.  The client's
# file covers 2 n round trips, each server's n.  A forked child starts with
# a copy of its parent's counts, so only each process's own function is
# read from its file.
set -eu
bin=${1:-./build/bench/fdpass/bench-fdpass}
n=${2:-20000}
dir=$(mktemp -d /tmp/fdpass-count.XXXXXX)
trap 'rm -rf "$dir"' EXIT

# inclusive Ir of function $2 in callgrind file $1 (0 if absent)
ir_of() {
	callgrind_annotate --inclusive=yes "$1" 2>/dev/null |
		awk -v fn=":$2 " 'index($0, fn) { gsub(",", "", $1); print $1; found = 1; exit }
		                   END { if (!found) print 0 }'
}

printf '%-6s %12s %12s %12s\n' impl client server total
for impl in raw weft; do
	valgrind --tool=callgrind --collect-atstart=no \
		--toggle-collect="timed_client_$impl" --toggle-collect="timed_server_$impl" \
		--callgrind-out-file="$dir/cg.$impl.%p" \
		"$bin" -s "$impl" -r 1 -n "$n" -W 3600 >/dev/null 2>"$dir/log.$impl"
	client=0
	server=0
	for f in "$dir"/cg."$impl".*; do
		c=$(ir_of "$f" "timed_client_$impl")
		s=$(ir_of "$f" "timed_server_$impl")
		# the parent is the file with client counts and no server ones
		if [ "$s" = 0 ]; then
			client=$c
		elif [ "$server" = 0 ]; then
			server=$s
		fi
	done
	awk -v i="$impl" -v c="$client" -v s="$server" -v n="$n" 'BEGIN {
		printf "%-6s %12.0f %12.0f %12.0f\n", i, c / (2 * n), s / n, c / (2 * n) + s / n }'
done
