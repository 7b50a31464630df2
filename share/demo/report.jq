# report.jq — the demo's report.json from the fragments share/demo.sh collects (see report() there)
def of($a; $k; $v): $a | map(select(.[$k] == $v)) | first;
def acc($m): of($acc; "after"; $m) | .accuracy? // null;
def sacc($m): of($acc; "after"; $m) | .sampled_accuracy? // null;
def ll($m; $t): $loglik | map(select(.model == $m and .text == $t)) | first | .nats_per_token? // null;
def diff($a; $b): if $a != null and $b != null then $a - $b else null end;
# the last trained model, the one quantized to FP8
($acc | map(.after) | map(select(startswith("fp8") | not)) | last) as $final
| ($gen | map(select(.record == "config")) | first) as $g
| ($mtp | map(select(.record == "summary")) | first) as $t
| ($q | map(select(.rel_fro_err? != null))) as $qt
| {
    scale: ($scale | tonumber), date: $date, version: $version, config: $config,
    machine: {cpus: $cpus, cpu: $cpu},
    data: ($data[0] // null),
    stages: [$stages[] | . + ((of($losses; "name"; .name) // {}) | del(.name))],
    total: {wall_s: ([$stages[].wall_s // 0] | add), cpu_s: ([$stages[].cpu_s // 0] | add)},
    accuracy: $acc,
    loglik: $loglik,
    rl: (if ($rlm | length) > 0 then {
             sft_accuracy: acc("sft"), rl_accuracy: acc("rl"), gain: diff(acc("rl"); acc("sft")),
             sft_sampled_accuracy: sacc("sft"), rl_sampled_accuracy: sacc("rl"), sampled_gain: diff(sacc("rl"); sacc("sft")),
             evals: [$rlm[] | select(has("eval/accuracy"))
                     | {step, accuracy: .["eval/accuracy"], sampled_accuracy: .["eval/sampled_accuracy"]}]}
         else null end),
    passkey: (if ($ext | map(select(.eval? == "passkey")) | length) > 0 then {
             accuracy: ($ext | map(select(.eval? == "passkey")) | map(.accuracy) | add / length),
             by_length: ($ext | map(select(.eval? == "passkey")) | group_by(.length)
                         | map({length: .[0].length, accuracy: (map(.accuracy) | add / length)}))}
         else null end),
    mla: (if $g then {kv_bytes_per_token_fp32: $g.kv_bytes_per_token_fp32,
                      kv_bytes_per_token_bf16: ($g.kv_bytes_per_token_fp32 / 2),
                      mha_kv_bytes_per_token_fp32: $g.kv_bytes_per_token_mha_fp32, ratio_mha: $g.kv_ratio_mha}
          else null end),
    mtp: (if $t and ($t.mtp_drafted // 0) > 0 then
             {drafted: $t.mtp_drafted, accepted: $t.mtp_accepted, acceptance: ($t.mtp_accepted / $t.mtp_drafted)}
          else null end),
    # FP8's cost: how much log-likelihood per token of held-out text it loses (positive = worse), and
    # task accuracy, with the weights dequantized at load (fp8) and with FP8 activations too (w8a8)
    fp8: (if ($qt | length) > 0 and ll("fp8"; "chat") != null and $final != null then {
             from: $final, tensors: ($qt | length),
             max_rel_fro_err: ($qt | map(.rel_fro_err) | max),
             mean_rel_fro_err: ($qt | map(.rel_fro_err) | add / length),
             bytes_before: $size[0].bytes_before, bytes_fp8: $size[0].bytes_fp8,
             chat: {model: $final, nats_per_token_before: ll($final; "chat"), nats_per_token_fp8: ll("fp8"; "chat"),
                    nats_per_token_w8a8: ll("fp8-w8a8"; "chat"),
                    loglik_drop_fp8: diff(ll($final; "chat"); ll("fp8"; "chat")),
                    loglik_drop_w8a8: diff(ll($final; "chat"); ll("fp8-w8a8"; "chat"))},
             prose: {model: "pretrain", nats_per_token_before: ll("pretrain"; "prose"),
                     nats_per_token_fp8: ll("pretrain-fp8"; "prose"),
                     loglik_drop_fp8: diff(ll("pretrain"; "prose"); ll("pretrain-fp8"; "prose"))},
             accuracy_before: acc($final), accuracy_fp8: acc("fp8"), accuracy_w8a8: acc("fp8-w8a8"),
             sampled_accuracy_before: sacc($final), sampled_accuracy_fp8: sacc("fp8"),
             sampled_accuracy_w8a8: sacc("fp8-w8a8")}
          else null end),
    samples: $samples,
    plots: ($plots[0] // [])
  }
