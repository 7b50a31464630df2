#!/bin/sh
# File formats: ours against the reference implementations, in one run, with ratios.
#   safetensors: write BF16 from float32 and read every tensor back as float32, against Python's
#                safetensors + torch (save_file of bf16 tensors; safe_open + get_tensor().float()).
#   token shards: write and read (decode + CRC + id checks) zstd-framed shards, against the zstd CLI
#                at the same level compressing/decompressing the same raw ids (no checks).
# Usage: bench/io.sh [MB] [MTOKENS]     (default 256 MB of BF16, 32M tokens of vocab 129280)
# Needs: make (libds built), $DS_PY (defaults to the reference venv), zstd.
set -eu
MB=${1:-256}
MTOK=${2:-32}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${DS_PY:-$HOME/.cache/ds-venv/bin/python}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$ROOT"
make -s -j2 objects >/dev/null
LIB=$(ls -t build/*/libds.a | head -1)
# shellcheck disable=SC2046
cc -O3 -march=native -std=c11 -D_GNU_SOURCE -fopenmp -Ilib bench/io_bench.c "$LIB" \
    $(pkg-config --libs libzstd jansson) -lm -o "$T/io_bench"
B="$T/io_bench"
val() { awk -v k="$1" '$1 == k { print $2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b / a }'; }
rate() { awk -v mb="$1" -v s="$2" 'BEGIN { printf "%.0f", mb / s }'; }

echo "safetensors: $MB MB of BF16 in 4 MiB tensors (load $(cut -d' ' -f1 /proc/loadavg))"
sync
ours_w=$("$B" st-write "$T/ours.safetensors" "$MB" | val st_write_seconds)
py_w=$("$PY" - "$T/py.safetensors" "$MB" <<'PY'
import sys, time, torch
from safetensors.torch import save_file
n = int(sys.argv[2]) // 4
src = (torch.arange(1 << 21, dtype=torch.int64) * 2654435761 % (1 << 32) >> 8).float() * 1e-6 - 8.0
t0 = time.perf_counter()
save_file({f"model.layers.{i}.w": src.to(torch.bfloat16).reshape(1024, 2048) for i in range(n)}, sys.argv[1],
          metadata={"format": "pt"})
print(time.perf_counter() - t0)
PY
)
cmp "$T/ours.safetensors" "$T/py.safetensors" >/dev/null 2>&1 && same="byte-identical" || same="different bytes (header order)"
ours_r=$("$B" st-read "$T/py.safetensors" 2>/dev/null | val st_read_seconds)
py_r=$("$PY" - "$T/py.safetensors" <<'PY'
import sys, time, torch
from safetensors import safe_open
t0 = time.perf_counter()
s = 0.0
with safe_open(sys.argv[1], framework="pt") as f:
    for k in f.keys():
        x = f.get_tensor(k).float()
        s += x.reshape(-1)[x.numel() // 2].item()
print(time.perf_counter() - t0)
PY
)
printf '  %-34s ours %7.3f s (%5s MB/s)   python %7.3f s (%5s MB/s)   ours/python speed %sx\n' \
    "write (f32 -> bf16, to a file)" "$ours_w" "$(rate "$MB" "$ours_w")" "$py_w" "$(rate "$MB" "$py_w")" "$(ratio "$ours_w" "$py_w")"
printf '  %-34s ours %7.3f s (%5s MB/s)   python %7.3f s (%5s MB/s)   ours/python speed %sx\n' \
    "read (bf16 -> f32, every tensor)" "$ours_r" "$(rate "$MB" "$ours_r")" "$py_r" "$(rate "$MB" "$py_r")" "$(ratio "$ours_r" "$py_r")"
echo "  files: $same"

echo "token shards: ${MTOK}M tokens, vocab 129280 (4-byte ids), zstd level 3"
"$PY" - "$T/ids.u32" "$MTOK" <<'PY'
import sys, numpy as np
rng = np.random.default_rng(0)
# Zipf-like ids, as text token streams are: compressible but not trivially
ids = np.minimum(rng.zipf(1.2, int(sys.argv[2]) * 1000000), 129279).astype(np.uint32)
ids[ids == 0] = 1
ids.tofile(sys.argv[1])
PY
RAWMB=$((MTOK * 4))
ours_sw=$("$B" shard-write "$T/ids.u32" "$T/ids.tok" 129280 | val shard_write_seconds)
t0=$(date +%s.%N); zstd -q -3 -f "$T/ids.u32" -o "$T/ids.zst"; t1=$(date +%s.%N)
z_w=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
ours_sr1=$("$B" shard-read "$T/ids.tok" 1 | val shard_read_seconds)
ours_sr2=$("$B" shard-read "$T/ids.tok" 2 | val shard_read_seconds)
t0=$(date +%s.%N); zstd -q -d -f "$T/ids.zst" -o "$T/ids.back"; t1=$(date +%s.%N)
z_r=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
printf '  %-34s ours %7.3f s (%5s MB/s)   zstd CLI %5.3f s (%5s MB/s)   ours/zstd speed %sx\n' \
    "write" "$ours_sw" "$(rate $RAWMB "$ours_sw")" "$z_w" "$(rate $RAWMB "$z_w")" "$(ratio "$ours_sw" "$z_w")"
printf '  %-34s ours %7.3f s (%5s MB/s)   zstd CLI %5.3f s (%5s MB/s)   ours/zstd speed %sx\n' \
    "read, 1 thread" "$ours_sr1" "$(rate $RAWMB "$ours_sr1")" "$z_r" "$(rate $RAWMB "$z_r")" "$(ratio "$ours_sr1" "$z_r")"
printf '  %-34s ours %7.3f s (%5s MB/s)   zstd CLI %5.3f s (%5s MB/s)   ours/zstd speed %sx\n' \
    "read, 2 threads" "$ours_sr2" "$(rate $RAWMB "$ours_sr2")" "$z_r" "$(rate $RAWMB "$z_r")" "$(ratio "$ours_sr2" "$z_r")"
echo "  sizes: raw $RAWMB MB, shard $(($(stat -c %s "$T/ids.tok") / 1000000)) MB, zstd file $(($(stat -c %s "$T/ids.zst") / 1000000)) MB"
