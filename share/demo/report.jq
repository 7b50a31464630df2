# report.jq — the demo's report.json from the fragments share/demo.sh collects (see report() there)
def of($a; $k; $v): $a | map(select(.[$k] == $v)) | first;
def acc($m): of($acc; "after"; $m) | .accuracy? // null;
def ll($m): of($prose; "model"; $m) | .nats_per_token? // null;
($acc | map(.after) | map(select(. != "fp8")) | last) as $final
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
    prose_loglik: $prose,
    rl: (if ($rlm | length) > 0 then {
             sft_accuracy: acc("sft"), rl_accuracy: acc("rl"),
             gain: (if acc("sft") != null and acc("rl") != null then acc("rl") - acc("sft") else null end),
             evals: [$rlm[] | select(has("eval/accuracy")) | {step, accuracy: .["eval/accuracy"]}]}
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
    fp8: (if ($qt | length) > 0 and ll("fp8") != null and $final != null then {
             from: $final, tensors: ($qt | length),
             max_rel_fro_err: ($qt | map(.rel_fro_err) | max),
             mean_rel_fro_err: ($qt | map(.rel_fro_err) | add / length),
             bytes_before: $size[0].bytes_before, bytes_fp8: $size[0].bytes_fp8,
             nats_per_token_before: ll($final), nats_per_token_fp8: ll("fp8"),
             loglik_drop_nats_per_token: (ll($final) - ll("fp8")),
             perplexity_ratio: ((ll($final) - ll("fp8")) | exp),
             accuracy_before: acc($final), accuracy_fp8: acc("fp8")}
          else null end),
    samples: $samples,
    plots: ($plots[0] // [])
  }
