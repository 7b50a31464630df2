#!/usr/bin/env bats
# FP8-resident weights in ds-generate: an FP8 checkpoint (DeepSeek's released layout, F8_E4M3 +
# weight_scale_inv per 128x128 block, from tests/ref/generate_ckpt.py; and ds-quantize's output) stays
# FP8 in memory, its codes mapped from the file and dequantized by tile inside the Linear GEMMs
# (lib/fp8/resident.h). Outputs equal the expanded path (--fp8-expand) within 1e-5 in log-probability:
# the GEMMs multiply the same fp32 values and differ at most in the order of fp32 additions over K
# (tests/unit/test_fp8_resident.c holds each product to 2 gamma_K sum |x w|; here the kernel adds in
# the same order and the results are in fact identical). Peak RSS, read from /proc, is well below the
# expanded path's, by what the "weights:" line reported before loading.

bats_require_minimum_version 1.5.0

setup_file() {
    export T="$BATS_FILE_TMPDIR"
    cat /usr/share/common-licenses/GPL-3 >"$T/prose.txt"
    "$DS_BIN/ds-tokenize" train -q --vocab-size 512 -o "$T/tok.json" "$T/prose.txt"
    local mk="$DS_PY $DS_ROOT/tests/ref/generate_ckpt.py --config $DS_ROOT/share/configs/tiny.json --tokenizer $T/tok.json"
    # hidden 256 and experts of 128 x 256: whole and partial 128-blocks
    $mk --out "$T/ds" --mtp --fp8 e4m3 --set hidden_size=256 --set intermediate_size=320 --set moe_intermediate_size=96
    $mk --out "$T/f32" --mtp --seed 4 --set hidden_size=256 --set intermediate_size=384 --set moe_intermediate_size=128
    "$DS_BIN/ds-quantize" -m "$T/f32" -o "$T/quant" --to fp8 -q
    # ~100M parameters, most of them routed experts: the weights dominate the process's memory
    $mk --out "$T/big" --fp8 e4m3 --set hidden_size=1024 --set intermediate_size=2048 --set moe_intermediate_size=512 \
        --set n_routed_experts=16 --set num_hidden_layers=4 --set num_nextn_predict_layers=0 --set q_lora_rank=256 \
        --set kv_lora_rank=128 --set num_attention_heads=8
}

# max |a - b| over the logprobs of two JSONL outputs (null entries skipped), and whether the tokens agree
compare() {
    "$DS_PY" -c '
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b) and a, (len(a), len(b))
d = max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra["logprobs"], rb["logprobs"]) if x is not None)
same = all(ra["tokens"] == rb["tokens"] for ra, rb in zip(a, b))
print("%.3g %s" % (d, same))
assert same and d <= 1e-5, (d, same)
' "$1" "$2"
}

@test "resident and expanded give the same generations (with MTP) and scores: DeepSeek's layout and ds-quantize's" {
    printf 'The license\nYou may convey\n{"prompt": "Each licensee"}\n' >"$T/p.txt"
    for ck in ds quant; do
        run --separate-stderr "$DS_BIN/ds-generate" -m "$T/$ck" --max-new 16 --temperature 0 --jsonl --mtp <"$T/p.txt"
        [ "$status" -eq 0 ]
        echo "$output" >"$T/res.jsonl"
        [[ "$stderr" == *"weights: "*" GiB in memory: FP8 Linear weights "*" GiB (E4M3 codes mapped from the checkpoint, block scales)"* ]]
        "$DS_BIN/ds-generate" -m "$T/$ck" --max-new 16 --temperature 0 --jsonl --mtp --fp8-expand -q <"$T/p.txt" >"$T/exp.jsonl"
        compare "$T/res.jsonl" "$T/exp.jsonl"
        "$DS_BIN/ds-generate" -m "$T/$ck" --score -q <"$T/p.txt" >"$T/res.jsonl"
        "$DS_BIN/ds-generate" -m "$T/$ck" --score -q --fp8-expand <"$T/p.txt" >"$T/exp.jsonl"
        compare "$T/res.jsonl" "$T/exp.jsonl"
    done
}

@test "--fp8-expand, --w8a8 and a float checkpoint expand as before (no FP8 weights line)" {
    for args in "-m $T/ds --fp8-expand" "-m $T/ds --w8a8" "-m $T/f32"; do
        run --separate-stderr "$DS_BIN/ds-generate" $args --prompt "The license" --max-new 4
        [ "$status" -eq 0 ]
        [[ "$stderr" != *"FP8 Linear weights"* ]]
    done
}

@test "peak RSS (/proc VmHWM) of the resident checkpoint is well below the expanded one, as reported before loading" {
    local args=(-m "$T/big" --prompt "The license" --max-new 8 --temperature 0)
    read -r hwm8 ru8 st8 < <("$DS_PY" "$DS_ROOT/tests/ref/peak_rss.py" "$T/err8" "$DS_BIN/ds-generate" "${args[@]}")
    read -r hwm32 ru32 st32 < <("$DS_PY" "$DS_ROOT/tests/ref/peak_rss.py" "$T/err32" "$DS_BIN/ds-generate" "${args[@]}" --fp8-expand)
    echo "VmHWM resident $hwm8 KiB (ru_maxrss $ru8), expanded $hwm32 KiB (ru_maxrss $ru32)"
    [ "$st8" -eq 0 ] && [ "$st32" -eq 0 ]
    # /proc agrees with the kernel's accounting at exit (polling can only miss the very end)
    [ "$hwm8" -le "$ru8" ] && [ "$((hwm8 * 100))" -ge "$((ru8 * 95))" ]
    [ "$((hwm8 * 2))" -lt "$hwm32" ]
    # the difference is what the report promised: expanded minus resident weights, within 20%
    line=$(grep "^weights: " "$T/err8")
    echo "$line"
    "$DS_PY" -c '
import re, sys
line, hwm8, hwm32 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
g = [float(x) for x in re.findall(r"([0-9.]+) GiB", line)]
total, expanded = g[0], g[3]
saved = (hwm32 - hwm8) / 2**20  # GiB
print("reported: %.3f GiB resident, %.3f expanded; measured saving %.3f GiB" % (total, expanded, saved))
assert 0.8 * (expanded - total) <= saved <= 1.5 * (expanded - total), saved
' "$line" "$hwm8" "$hwm32"
}
