#!/bin/sh
# Allocations per operation of benches/allocs.rs (needs `perf probe -x <libc> malloc`, realloc, calloc first):
# scripts/alloc-count.sh target/release/deps/allocs-<hash> create|post [N]
# count.sh BIN MODE N: mallocs+reallocs+callocs per op (difference of MODE and MODE-warm)
BIN=$1; MODE=$2; N=${3:-20000}
c() { ZS_ALLOC_N=$N ZS_ALLOC_MODE=$1 perf stat -x, -e probe_libc:malloc,probe_libc:realloc,probe_libc:calloc $BIN 2>&1 >/tmp/af-out.$$ | awk -F, '{s+=$1} END {print s}'; }
W=$(c $MODE-warm); M=$(c $MODE); grep "CPU/op" /tmp/af-out.$$
echo "$BIN $MODE: warm $W, warm+$N $M, allocs/op $(echo "($M-$W)/$N" | bc -l | cut -c1-6)"
rm -f /tmp/af-out.$$
