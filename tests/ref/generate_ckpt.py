#!/usr/bin/env python3
"""Write a random DeepSeek-V3 checkpoint in Hugging Face's layout with numpy + safetensors (no torch),
for ds-generate's tests and benchmark.

  generate_ckpt.py --config share/configs/tiny.json --out DIR [--mtp] [--std 0.1] [--seed 0]
                   [--tokenizer tok.json] [--dtype f32|bf16] [--bf16-matrices] [--stream FILE]

DIR gets config.json, model.safetensors (and tokenizer.json when given). --mtp adds the MTP module's
tensors at layer num_hidden_layers (enorm, hnorm, eh_proj, a full decoder layer, shared_head.norm, and
the copies of the embedding and head DeepSeek's checkpoints carry). --stream FILE also writes the
single-file stream form: config (and tokenizer) as JSON strings in __metadata__. --bf16-matrices rounds
every 2-D float32 tensor (not FP8 codes or their scales) to bfloat16 with ml_dtypes (nearest even) and
stores it as F32: the weights ds-generate --dtype bf16 holds, made by a tool other than ds-generate. Norm gains are
1 + noise, expert biases small, so routing and distributions are far from uniform.
"""
import argparse
import json
import os

import numpy as np
from safetensors.numpy import save_file


def bf16_round(a):
    """Round float32 to the nearest bfloat16 (ties to even), kept as float32 values."""
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def tensors(c, rng, std, mtp):
    D, V, H = c["hidden_size"], c["vocab_size"], c["num_attention_heads"]
    dn, dr, dv = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    rq, rkv = c.get("q_lora_rank") or 0, c["kv_lora_rank"]
    inter, ie, E = c["intermediate_size"], c["moe_intermediate_size"], c.get("n_routed_experts") or 0
    L, kdense = c["num_hidden_layers"], c.get("first_k_dense_replace", 0)
    freq = c.get("moe_layer_freq", 1)
    t = {}

    def mat(name, r, k, s=std):
        t[name] = (rng.standard_normal((r, k)) * s).astype(np.float32)

    def norm(name, n):
        t[name] = (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    mat("model.embed_tokens.weight", V, D, 1.0)
    for l in range(L + (c.get("num_nextn_predict_layers", 0) if mtp else 0)):
        p = f"model.layers.{l}."
        if l >= L:
            norm(p + "enorm.weight", D)
            norm(p + "hnorm.weight", D)
            mat(p + "eh_proj.weight", D, 2 * D)
        norm(p + "input_layernorm.weight", D)
        if rq > 0:
            mat(p + "self_attn.q_a_proj.weight", rq, D)
            norm(p + "self_attn.q_a_layernorm.weight", rq)
            mat(p + "self_attn.q_b_proj.weight", H * (dn + dr), rq, 3 * std)
        else:
            mat(p + "self_attn.q_proj.weight", H * (dn + dr), D)
        mat(p + "self_attn.kv_a_proj_with_mqa.weight", rkv + dr, D)
        norm(p + "self_attn.kv_a_layernorm.weight", rkv)
        mat(p + "self_attn.kv_b_proj.weight", H * (dn + dv), rkv, 3 * std)
        mat(p + "self_attn.o_proj.weight", D, H * dv)
        norm(p + "post_attention_layernorm.weight", D)
        moe = E > 0 and (l >= L or (l >= kdense and l % max(freq, 1) == 0))
        if not moe:
            mat(p + "mlp.gate_proj.weight", inter, D)
            mat(p + "mlp.up_proj.weight", inter, D)
            mat(p + "mlp.down_proj.weight", D, inter)
        else:
            mat(p + "mlp.gate.weight", E, D, 3 * std)
            t[p + "mlp.gate.e_score_correction_bias"] = (0.05 * rng.standard_normal(E)).astype(np.float32)
            for e in range(E):
                mat(p + f"mlp.experts.{e}.gate_proj.weight", ie, D)
                mat(p + f"mlp.experts.{e}.up_proj.weight", ie, D)
                mat(p + f"mlp.experts.{e}.down_proj.weight", D, ie)
            si = ie * c.get("n_shared_experts", 0)
            if si:
                mat(p + "mlp.shared_experts.gate_proj.weight", si, D)
                mat(p + "mlp.shared_experts.up_proj.weight", si, D)
                mat(p + "mlp.shared_experts.down_proj.weight", D, si)
        if l >= L:
            norm(p + "shared_head.norm.weight", D)
    norm("model.norm.weight", D)
    mat("lm_head.weight", V, D, 3 * std)
    if mtp:
        for l in range(L, L + c.get("num_nextn_predict_layers", 0)):
            t[f"model.layers.{l}.embed_tokens.weight"] = t["model.embed_tokens.weight"]
            t[f"model.layers.{l}.shared_head.head.weight"] = t["lm_head.weight"]
    return t


def fp8_blocks(t, keep_codes):
    """Quantize the matmul weights inside the blocks (spec 9.2: not embeddings, heads, norms, the router or
    eh_proj) per 128x128 block: s = amax/448, codes = e4m3(W/s); scale_inv = s (a dequantization factor)."""
    import ml_dtypes

    out = {}
    for k, w in t.items():
        skip = (w.ndim != 2 or "embed_tokens" in k or "head" in k or k.endswith("mlp.gate.weight")
                or "eh_proj" in k or "norm" in k)
        if skip:
            out[k] = w
            continue
        r, c = w.shape
        br, bc = -(-r // 128), -(-c // 128)
        scale = np.zeros((br, bc), np.float32)
        codes = np.zeros_like(w, dtype=ml_dtypes.float8_e4m3fn)
        for i in range(br):
            for j in range(bc):
                blk = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
                s = np.float32(max(np.abs(blk).max(), 1e-12) / 448.0)
                scale[i, j] = s
                codes[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = (blk / s).astype(ml_dtypes.float8_e4m3fn)
        if keep_codes:
            out[k] = codes
            out[k + "_scale_inv"] = scale
        else:
            deq = codes.astype(np.float32)
            for i in range(br):
                for j in range(bc):
                    deq[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] *= scale[i, j]
            out[k] = deq
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mtp", action="store_true")
    ap.add_argument("--std", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--stream")
    ap.add_argument("--bf16-matrices", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="KEY=JSON config override")
    ap.add_argument("--drop", action="append", default=[], help="leave this tensor out")
    ap.add_argument("--fp8", choices=["e4m3", "dequantized"],
                    help="block matmul weights as DeepSeek releases them: F8_E4M3 + weight_scale_inv per 128x128 "
                         "block (e4m3), or the float32 values those decode to (dequantized)")
    a = ap.parse_args()
    cfg_text = open(a.config).read()
    c = json.loads(cfg_text)
    for kv in a.set:
        k, v = kv.split("=", 1)
        c[k] = json.loads(v)
    if a.set:
        cfg_text = json.dumps(c, indent=2)
    t = tensors(c, np.random.default_rng(a.seed), a.std, a.mtp)
    for name in a.drop:
        del t[name]
    if a.fp8:
        t = fp8_blocks(t, a.fp8 == "e4m3")
        c["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                    "weight_block_size": [128, 128]}
        cfg_text = json.dumps(c, indent=2)
    if a.bf16_matrices:
        import ml_dtypes

        t = {k: (v.astype(ml_dtypes.bfloat16).astype(np.float32)
                 if v.ndim == 2 and v.dtype == np.float32 and not k.endswith("_scale_inv") else v) for k, v in t.items()}
    if a.dtype == "bf16":
        import ml_dtypes

        t = {k: (v if k.endswith("e_score_correction_bias") else bf16_round(v).astype(ml_dtypes.bfloat16)) for k, v in t.items()}
        c["torch_dtype"] = "bfloat16"
        cfg_text = json.dumps(c, indent=2)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        f.write(cfg_text)
    save_file(t, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    tok = None
    if a.tokenizer:
        tok = open(a.tokenizer).read()
        with open(os.path.join(a.out, "tokenizer.json"), "w") as f:
            f.write(tok)
    if a.stream:
        meta = {"format": "pt", "config": cfg_text}
        if tok:
            meta["tokenizer"] = tok
        save_file(t, a.stream, metadata=meta)


if __name__ == "__main__":
    main()
