#!/usr/bin/env bats
# lib/model against transformers' DeepseekV3ForCausalLM: random tiny models saved by transformers are
# loaded by libds; per-token log-probs (main head and MTP modules) agree to 1e-4 relative, the loss and
# every parameter gradient to 1e-3 (tests/ref/model_parity.py has the details and the reference).

driver() {
    for u in $DS_UNITS; do case $u in */test_model_io) echo "$DS_ROOT/$u" ;; esac; done
}

# one Python process for every variant (importing torch and transformers is most of the time)
setup_file() {
    DRIVER=$(driver)
    [ -x "$DRIVER" ] || return 0
    "$DS_PY" "$DS_ROOT/tests/ref/model_parity.py" "$DRIVER" "$BATS_FILE_TMPDIR/ckpt" \
        v3 no-q-lora-yarn wide-v3-yarn v2-softmax yarn-mscale-only yarn-mscale-all-dim-only rope-halves \
        rope-halves-dense-yarn >"$BATS_FILE_TMPDIR/parity.log" 2>&1 || true
}

setup() {
    DRIVER=$(driver)
    [ -x "$DRIVER" ] || skip "test_model_io not built"
}

parity() { # variant: its lines of the shared run, all "ok:"
    grep -E "^(ok|FAIL): $1:|Error|Traceback" "$BATS_FILE_TMPDIR/parity.log" >"$BATS_TEST_TMPDIR/v" || true
    cat "$BATS_TEST_TMPDIR/v"
    [ -s "$BATS_TEST_TMPDIR/v" ]
    ! grep -qvE "^ok: " "$BATS_TEST_TMPDIR/v"
}

@test "V3 routing (sigmoid, bias, 4 groups top-2), q_lora, MTP, balance loss" { parity v3; }
@test "no query compression (q_proj), 2 groups top-1, YaRN with mscale = mscale_all_dim" { parity no-q-lora-yarn; }
@test "one group, top-3 of 6 experts, two shared, 2 dense layers, YaRN as V3 (s = 40), two MTP modules" {
    parity wide-v3-yarn
}
@test "V2-style routing (softmax, groups by best score, no bias, no renormalisation) against DeepseekV2ForCausalLM" {
    parity v2-softmax
}
@test "YaRN with mscale only: transformers' cos/sin factor 0.1 ln s + 1 (DeepSeek's remote code differs)" {
    parity yarn-mscale-only
}
@test "YaRN with mscale_all_dim only: transformers' cos/sin factor, softmax x m(s, mscale_all_dim)^2" {
    parity yarn-mscale-all-dim-only
}
@test "rope_interleave false (rotate-half layout): MoE and dense layers, q_lora, MTP" { parity rope-halves; }
@test "rope_interleave false on an all-dense model without query compression, YaRN, 8 rope dims" {
    parity rope-halves-dense-yarn
}
@test "a transformers checkpoint (no MTP tensors) loads with MTP disabled and a warning" {
    "$DS_PY" - "$BATS_TEST_TMPDIR/plain" <<'PY'
import sys, torch
from safetensors.torch import save_file
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
cfg = DeepseekV3Config(vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
    num_hidden_layers=2, first_k_dense_replace=1, num_attention_heads=2, num_key_value_heads=2,
    n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1, q_lora_rank=16,
    kv_lora_rank=8, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, num_mtp_layers=1)
torch.manual_seed(0)
DeepseekV3ForCausalLM(cfg).save_pretrained(sys.argv[1])
save_file({"tokens": torch.arange(8, dtype=torch.int32).view(1, 8), "targets": torch.arange(1, 9, dtype=torch.int32).view(1, 8),
           "dlogp": torch.full((1, 8), -0.125)}, sys.argv[1] + "/batch.safetensors", metadata={"format": "pt"})
PY
    run "$DRIVER" --ref "$BATS_TEST_TMPDIR/plain"
    echo "$output"
    [ "$status" -eq 0 ]
    [[ "$output" == *"warning: checkpoint has no MTP tensors (model.layers.2.*): multi-token prediction disabled"* ]]
}
