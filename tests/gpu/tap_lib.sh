# tap_lib.sh — shared by the GPU end-to-end scripts (tests/gpu/test_tools.sh, test_fp8_resident.sh), sourced
# first: the environment (root, bin, py, gpu from DS_ROOT, DS_BIN, DS_PY, GPU_DEVICE) and a scratch folder w
# removed at exit, TAP counting (check, note), the 400-token BPE and shards over the repository's
# documentation with three id prompts (make_data), and comparisons of two runs (cmp_gen, cmp_score, cmp_first).
root=${DS_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
bin=${DS_BIN:-$root/bin}
case $bin in /*) ;; *) bin=$root/$bin ;; esac
py=${DS_PY:-python3}
gpu=${GPU_DEVICE:-cuda}
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
export OMP_WAIT_POLICY=passive
n=0 failed=0
check() { # status description
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; fi
}
note() { sed 's/^/# /'; }

make_data() { # $w/tok.json, $w/shards/, $w/prompts.txt (exits with "Bail out!" on failure)
    cat "$root"/docs/*.md "$root"/README.md "$root"/tools/README.md >"$w/text.txt" 2>/dev/null
    "$bin/ds-tokenize" train -q --vocab-size 400 -o "$w/tok.json" "$w/text.txt" || { echo "Bail out! ds-tokenize train"; exit 1; }
    "$bin/ds-tokenize" encode -q -t "$w/tok.json" -o "$w/shards/" "$w/text.txt" || { echo "Bail out! ds-tokenize encode"; exit 1; }
    printf '%s\n' "5 17 42 9 100 3" "7 7 7" "12 250 31 64 77 8 19 200 11 4 6" >"$w/prompts.txt"
}

cmp_gen() { # A B TOL: two --jsonl runs of the three prompts: same tokens, logprobs within TOL
    "$py" - "$@" <<'EOF'
import json, sys
ra = sorted(map(json.loads, open(sys.argv[1])), key=lambda r: r["index"])
rb = sorted(map(json.loads, open(sys.argv[2])), key=lambda r: r["index"])
tol = float(sys.argv[3])
ok = len(ra) == len(rb) == 3
same = sum(x["tokens"] == y["tokens"] for x, y in zip(ra, rb))
worst = max((abs(p - q) for x, y in zip(ra, rb) for p, q in zip(x["logprobs"], y["logprobs"])), default=0.0)
print(f"# {same} of {len(ra)} completions identical; max |logprob difference| {worst:.3g} (tolerance {tol:g})")
sys.exit(0 if ok and same == len(ra) and worst <= tol else 1)
EOF
}

cmp_score() { # A B TOL: two --score runs of the three prompts: log-probs (past the first) within TOL
    "$py" - "$@" <<'EOF'
import json, sys
ra, rb = [list(map(json.loads, open(f))) for f in sys.argv[1:3]]
d = max(abs(p - q) for x, y in zip(ra, rb) for p, q in zip(x["logprobs"][1:], y["logprobs"][1:]))
print(f"# --score: max |logprob difference| {d:.3g}")
sys.exit(0 if len(ra) == len(rb) == 3 and d <= float(sys.argv[3]) else 1)
EOF
}

cmp_first() { # A B TOL: B's first generated token's log-prob within TOL of A's, all of B's finite
    "$py" - "$@" <<'EOF'
import json, math, sys
ra = sorted(map(json.loads, open(sys.argv[1])), key=lambda r: r["index"])
rb = sorted(map(json.loads, open(sys.argv[2])), key=lambda r: r["index"])
d = max(abs(x["logprobs"][0] - y["logprobs"][0]) for x, y in zip(ra, rb))
agree = sum(p == q for x, y in zip(ra, rb) for p, q in zip(x["tokens"], y["tokens"]))
total = sum(len(x["tokens"]) for x in ra)
print(f"# first-token logprob difference {d:.3g}; {agree} of {total} greedy tokens agree")
sys.exit(0 if d < float(sys.argv[3]) and all(math.isfinite(p) for y in rb for p in y["logprobs"]) else 1)
EOF
}
