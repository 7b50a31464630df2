#!/bin/bash
# Run every suite and count TAP results: C unit tests (tests/unit), per-tool bats suites (tests/bats),
# reference checks against independent Python implementations (tests/ref), and a short run of each
# libFuzzer harness (tests/fuzz). The last line is "N passed, N failed".
# Environment (set by the Makefile): DS_BIN, DS_PY, DS_UNITS, DS_FUZZERS, FUZZ_SECONDS, DS_QUICK,
# DS_BATS_SUITES (the bats files to run; tests/bats/*.bats by default).
set -u
cd "$(dirname "$0")/.."
export DS_ROOT=$PWD
export PATH="$DS_BIN:$PATH"
passed=0 failed=0 skipped=0
failures=()
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

# count TAP lines from a file; a suite whose exit status is non-zero without any "not ok" is a failure
count_tap() { # name file status
    local name=$1 file=$2 status=$3 p f s
    p=$(grep -cE '^ok ' "$file" | head -1)
    s=$(grep -cE '^ok .*# (skip|SKIP)' "$file" | head -1)
    f=$(grep -cE '^not ok ' "$file" | head -1)
    p=$((p - s))
    if [ "$status" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1
        failures+=("$name: exited with status $status")
    fi
    while IFS= read -r line; do failures+=("$name: $line"); done < <(grep -E '^not ok ' "$file")
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    printf '%-40s %4d passed %4d failed%s\n' "$name" "$p" "$f" "$([ "$s" -gt 0 ] && echo " $s skipped")"
    if [ "$f" -gt 0 ] || [ -n "${DS_VERBOSE_TESTS:-}" ]; then grep -vE '^ok ' "$file" | sed 's/^/    /' | head -60; fi
}

for t in ${DS_UNITS:-}; do
    [ -x "$t" ] || continue
    n=$(basename "$t")
    ( cd "$log" && timeout 900 "$DS_ROOT/$t" ) >"$log/$n.tap" 2>&1
    count_tap "unit/$n" "$log/$n.tap" $?
done

suites="${DS_BATS_SUITES-tests/bats/*.bats}"
[ -z "${DS_QUICK:-}" ] && suites="$suites tests/ref/*.bats"
for b in $suites; do
    [ -f "$b" ] || continue
    n=${b#tests/}
    timeout 2400 bats --tap "$b" >"$log/$(basename "$b").tap" 2>&1
    count_tap "$n" "$log/$(basename "$b").tap" $?
done

if [ -z "${DS_QUICK:-}" ] && [ -z "${DS_SANITIZE:-}" ]; then
    for fz in ${DS_FUZZERS:-}; do
        [ -x "$fz" ] || continue
        n=$(basename "$fz")
        corpus="$log/corpus-$n"
        mkdir -p "$corpus"
        [ -d "tests/fuzz/corpus/${n#fuzz_}" ] && cp -r "tests/fuzz/corpus/${n#fuzz_}/." "$corpus/"
        if "$fz" -max_total_time="${FUZZ_SECONDS:-4}" -rss_limit_mb=2048 -timeout=10 \
               -artifact_prefix="$log/" "$corpus" >"$log/$n.out" 2>&1; then
            echo "ok 1 - $n ran ${FUZZ_SECONDS:-4}s without a crash" >"$log/$n.tap"
            count_tap "fuzz/$n" "$log/$n.tap" 0
        else
            { echo "not ok 1 - $n found a crash"; tail -30 "$log/$n.out" | sed 's/^/# /'; } >"$log/$n.tap"
            count_tap "fuzz/$n" "$log/$n.tap" 1
        fi
    done
fi

if [ ${#failures[@]} -gt 0 ]; then
    echo
    echo "Failures:"
    printf '  %s\n' "${failures[@]}"
fi
[ "$skipped" -gt 0 ] && echo "($skipped skipped)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
