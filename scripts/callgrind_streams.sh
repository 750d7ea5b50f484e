#!/usr/bin/env bash
# Instructions per fresh stream, whole process (callgrind): the load harness's first-byte
# scenario (SDK request head, provider response head, 3 events, usage chunk, durable record)
# against a Sluice binary run under valgrind, once with N streams and once with 2N. Per stream:
# (I(2N) - I(N)) / N, so start-up and shutdown cancel out. Not timing: the figure is stable to
# a few hundred instructions from run to run, which makes it the way to compare two builds.
#
#   scripts/callgrind_streams.sh [BINARY] [N]     (defaults: target/release/sluice, 1000)
#
# Needs valgrind. Prints the figure and the callgrind file of the 2N run, for
# `callgrind_annotate --inclusive=yes FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/release/sluice}")
n=${2:-1000}
command -v valgrind >/dev/null || { echo "callgrind_streams: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
[ -x "$bin" ] || { echo "callgrind_streams: no binary at $bin (cargo build --release)" >&2; exit 1; }
out=$(mktemp -d /tmp/sluice-callgrind.XXXXXX)
# The harness runs a baseline binary as given: this wrapper puts it under callgrind. Valgrind
# runs in a session of its own and gets the harness's TERM from the wrapper: the harness KILLs
# the proxy's process group 100 ms after its TERM, and Sluice leaves only once its listeners'
# first-request grace (1 s) is over, so callgrind would never write its file in the group.
cat > "$out/sluice" <<WRAP
#!/bin/sh
setsid valgrind --tool=callgrind --callgrind-out-file=$out/cg.\$CG_STREAMS.%p $bin "\$@" &
child=\$!
trap 'kill -TERM \$child' TERM
wait \$child
trap - TERM
wait \$child
WRAP
chmod +x "$out/sluice"
# Valgrind is out of the harness's process group: if the harness is stopped before it sends TERM
# (Ctrl-C, its watchdog), nothing else would stop the proxy under valgrind.
trap 'pkill -TERM -f -- "--callgrind-out-file=$out/" 2>/dev/null || true' EXIT
total() {
    # The proxy's own file (the harness also runs `--version` under the wrapper), once callgrind
    # has finished it (the proxy outlives the harness's run by its 1 s of shutdown).
    local file
    for _ in $(seq 100); do
        file=$(grep -l '^cmd: .* -c ' "$out"/cg."$1".* 2>/dev/null | head -1 || true)
        [ -n "$file" ] && grep -q '^totals:' "$file" && break
        sleep 0.1
    done
    if [ -z "$file" ] || ! grep -q '^totals:' "$file"; then
        echo "callgrind_streams: callgrind's file for $1 streams was not finished within 10 s ($out)" >&2
        exit 1
    fi
    echo "$file $(grep -m1 '^summary:' "$file" | cut -d' ' -f2)"
}
for streams in "$n" $((2 * n)); do
    CG_STREAMS=$streams SLUICE_LOAD_TIMEOUT_S=900 SLUICE_LOAD_BASELINE="$out/sluice" \
        SLUICE_LOAD_TARGETS=sluice-baseline SLUICE_LOAD_SCENARIOS=first_byte \
        SLUICE_LOAD_FIRST_BYTE=$streams SLUICE_LOAD_ROUNDS=1 SLUICE_LOAD_OUT="$out" \
        cargo bench --bench load >"$out/load.$streams.log" 2>&1 ||
        { echo "callgrind_streams: the load run failed, see $out/load.$streams.log" >&2; exit 1; }
done
read -r _ one < <(total "$n")
read -r file two < <(total $((2 * n)))
echo "instructions per fresh stream: $(( (two - one) / n )) ($bin; $n and $((2 * n)) streams)"
echo "callgrind file ($((2 * n)) streams): $file"
