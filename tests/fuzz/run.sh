#!/bin/sh
# Builds the libFuzzer targets (every tests/fuzz/fuzz_*.c: protocol/ and the
# broker's pure modules) and runs each for a bounded time.
#
#   tests/fuzz/run.sh BUILD_DIR [SECONDS]    (default 20 s per target)
#
# Configures BUILD_DIR with clang and -DGALE_FUZZ=ON if needed. Targets run one per CPU at
# a time (GALE_FUZZ_JOBS). Each target
# starts from tests/fuzz/corpus/<target>/ and keeps what it finds in
# tests/fuzz/corpus-<target>/ (ignored by git); crash, leak and timeout
# artifacts go to BUILD_DIR/fuzz-artifacts/. Exits non-zero on any failure.
set -eu

if [ $# -lt 1 ]; then
    echo "usage: $0 BUILD_DIR [SECONDS]" >&2
    exit 2
fi
build=$1
secs=${2:-20}
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
rss=${GALE_FUZZ_RSS_MB:-2048}

if [ ! -f "$build/CMakeCache.txt" ]; then
    CC=${CC:-clang} cmake -S "$src" -B "$build" -DGALE_FUZZ=ON -DGALE_TESTS=OFF \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
targets=$(cd "$here" && ls fuzz_*.c | sed 's/\.c$//')
# shellcheck disable=SC2086
cmake --build "$build" --target $targets -j "$(nproc 2>/dev/null || echo 2)"

mkdir -p "$build/fuzz-artifacts"
# One target per CPU at a time (GALE_FUZZ_JOBS overrides): each still runs SECONDS.
jobs=${GALE_FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}

fuzz_one() {
    t=$1
    work="$here/corpus-$t"
    mkdir -p "$work"
    if ! "$build/tests/fuzz/$t" -max_total_time="$secs" -rss_limit_mb="$rss" -timeout=10 \
        -dict="$here/gale.dict" -artifact_prefix="$build/fuzz-artifacts/$t-" \
        -print_final_stats=1 "$work" "$here/corpus/$t" 2>"$build/fuzz-artifacts/$t.log"; then
        echo "!! $t failed; see $build/fuzz-artifacts/$t.log" >&2
        tail -n 40 "$build/fuzz-artifacts/$t.log" >&2
        return 1
    fi
    echo "== $t: ${secs}s, $(grep -E "stat::number_of_executed_units" \
        "$build/fuzz-artifacts/$t.log" | awk '{print $2}') inputs"
}

status=0
running=0
pids=""
for t in $targets; do
    fuzz_one "$t" &
    pids="$pids $!"
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        for p in $pids; do
            wait "$p" || status=1
        done
        pids=""
        running=0
    fi
done
for p in $pids; do
    wait "$p" || status=1
done
exit $status
