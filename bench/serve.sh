#!/bin/bash
# ds-generate --serve against transformers behind a minimal HTTP server (bench/serve_ref.py), the same
# checkpoint, threads and requests, in one run: throughput and latency (time to first token, decode
# tokens/s per request) at 1, 4 and 16 concurrent clients sending streamed greedy completions through the
# openai client (bench/serve_load.py). Every answer is MAX_TOKENS long (EOS ignored on both sides).
#
# Usage: bench/serve.sh [CONFIG]      (default share/configs/demo.json, random weights, GPL tokenizer)
# Environment: THREADS (2), MAX_TOKENS (64), BATCH (16: ds-generate's slots), DS_BIN, DS_PY,
# OMP_WAIT_POLICY (passive unless set, for both servers: on a busy machine, OpenMP threads that spin between
# parallel regions take the cores the HTTP threads and the clients need; see docs/BENCHMARKS.md).
set -eu
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DS_BIN:-$ROOT/bin}
PY=${DS_PY:-$HOME/.cache/ds-venv/bin/python}
CONFIG=${1:-$ROOT/share/configs/demo.json}
THREADS=${THREADS:-2} MAX_TOKENS=${MAX_TOKENS:-64} BATCH=${BATCH:-16}
W=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$W"' EXIT

V=$(jq .vocab_size "$CONFIG")
"$BIN/ds-tokenize" train -q --vocab-size "$V" -o "$W/tok.json" /usr/share/common-licenses/GPL-3
"$PY" "$ROOT/tests/ref/generate_ckpt.py" --config "$CONFIG" --out "$W/ck" --std 0.05 --tokenizer "$W/tok.json"

# wait_url FILE: the URL a server printed on its first stdout line, once /health answers
wait_url() {
    local u=""
    for _ in $(seq 1200); do
        u=$(head -1 "$1" 2>/dev/null)
        [ -n "$u" ] && curl -sf "$u/health" >/dev/null && { echo "$u"; return; }
        sleep 0.1
    done
    echo "server did not start" >&2
    exit 1
}
load() { # URL: one JSON line per concurrency
    for c in 1 4 16; do
        local per=$((c == 1 ? 4 : c == 4 ? 2 : 1))
        "$PY" "$ROOT/bench/serve_load.py" "$1" ck "$c" "$per" "$MAX_TOKENS"
    done
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min) on $(nproc) cores" >&2
"$BIN/ds-generate" -m "$W/ck" --serve 127.0.0.1:0 --threads "$THREADS" --batch "$BATCH" --ignore-eos -q >"$W/ours.url" &
pid=$!
load "$(wait_url "$W/ours.url")" >"$W/ours.jsonl"
kill "$pid"; wait "$pid" || true; pid=""
DS_THREADS=$THREADS "$PY" "$ROOT/bench/serve_ref.py" "$W/ck" 0 >"$W/ref.url" 2>"$W/ref.err" &
pid=$!
load "$(wait_url "$W/ref.url")" >"$W/ref.jsonl"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)" >&2

"$PY" - "$W/ours.jsonl" "$W/ref.jsonl" "$CONFIG" "$THREADS" "$MAX_TOKENS" "$BATCH" <<'PY'
import json, sys
ours = [json.loads(l) for l in open(sys.argv[1])]
ref = [json.loads(l) for l in open(sys.argv[2])]
cfg, th, n, b = sys.argv[3:7]
import os
print(f"config {cfg.split('/')[-1]}, {th} threads each, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, streamed greedy completions of {n} tokens, "
      f"ds-generate --batch {b}; transformers one request at a time")
print(f"{'clients':>7} {'requests':>8} | {'throughput tok/s':>22} | {'TTFT median (p90) s':>33} | {'decode tok/s per request, median':>34}")
print(f"{'':>7} {'':>8} | {'ours':>10} {'ref':>11} | {'ours':>16} {'ref':>16} | {'ours':>16} {'ref':>17}")
for o, r in zip(ours, ref):
    print(f"{o['clients']:>7} {o['requests']:>8} | {o['throughput_tok_s']:>10.1f} {r['throughput_tok_s']:>11.1f} | "
          f"{o['ttft_median_s']:>7.3f} ({o['ttft_p90_s']:.3f}) {r['ttft_median_s']:>8.3f} ({r['ttft_p90_s']:.3f}) | "
          f"{o['tps_median']:>16.1f} {r['tps_median']:>17.1f}")
PY
