#!/usr/bin/env python3
"""Parity of libds's DeepSeek-V3 network with Hugging Face transformers' DeepseekV3ForCausalLM.

usage: model_parity.py DRIVER WORKDIR VARIANT...

Builds a random tiny DeepseekV3 model in transformers (weights at a generic operating point: unit-variance
projections, sharper routers, norm gains away from 1, non-zero e_score_correction_bias), saves it with
save_pretrained, adds MTP modules under the released names (model.layers.{L+k}.*, experts in transformers'
fused layout), runs DRIVER (tests/unit/test_model_io --ref) on the directory, and compares

  per-token log p(target) of the main head and of every MTP module   to 1e-4 relative,
  the loss (sum_t c_t logp_t + sum c'_t mtp_logp_t + balance loss)      to 1e-3 relative,
  every parameter gradient (per tensor, ||ours - ref|| / ||ref||)      to 1e-3,

against torch autograd through transformers' modules. The MTP modules and the sequence-wise balance
loss are not part of DeepseekV3ForCausalLM; the reference composes them from transformers' own
MtpLayer parts (enorm, hnorm, eh_proj, the decoder block, post_norm = shared_head.norm) and router
outputs, following spec sections 5.2 and 6 (decisions in docs/DESIGN.md). YaRN follows transformers,
also with only one of mscale / mscale_all_dim (where DeepSeek's remote code differs); rope_interleave
false (the rope dims of q_b_proj / kv_a_proj_with_mqa rotate as halves, rotate-half) is checked on a MoE
and an all-dense model.
"""
import json
import math
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM
from transformers.modeling_layers import MtpModel

torch.set_num_threads(2)

BASE = dict(vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
            first_k_dense_replace=1, num_attention_heads=2, num_key_value_heads=2, n_routed_experts=8,
            n_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2, q_lora_rank=16, kv_lora_rank=8,
            qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, max_position_embeddings=256,
            routed_scaling_factor=2.5, norm_topk_prob=True, rms_norm_eps=1e-6, tie_word_embeddings=False)


def yarn(factor, orig, mscale=None, mscale_all_dim=None):
    r = dict(rope_type="yarn", rope_theta=10000.0, factor=factor, original_max_position_embeddings=orig,
             beta_fast=32.0, beta_slow=1.0)
    if mscale is not None:
        r["mscale"] = mscale
    if mscale_all_dim is not None:
        r["mscale_all_dim"] = mscale_all_dim
    return r


# name: (config overrides, MTP depth, balance alpha)
# "v2-softmax" runs DeepseekV2ForCausalLM: softmax scores, groups by their best expert, no bias, no
# renormalisation (spec 4.2; DeepSeek-V2's routing in a V3 config: scoring_func softmax,
# topk_method group_limited_greedy, norm_topk_prob false).
VARIANTS = {
    "v2-softmax": (dict(topk_method="group_limited_greedy", num_experts_per_tok=3, routed_scaling_factor=1.5,
                        norm_topk_prob=False), 0, 0.01),
    "v3": (dict(), 1, 0.01),
    "no-q-lora-yarn": (dict(q_lora_rank=None, n_group=2, topk_group=1, rope_parameters=yarn(4.0, 16, 0.707, 0.707)),
                       1, 0.0),
    "wide-v3-yarn": (dict(n_group=1, topk_group=1, n_routed_experts=6, num_experts_per_tok=3, n_shared_experts=2,
                          first_k_dense_replace=2, num_hidden_layers=4,
                          rope_parameters=yarn(40.0, 64, 1.0, 1.0)), 2, 0.02),
    # only one of the mscales: transformers scales cos/sin by 0.1 ln s + 1 (DeepSeek's remote code by
    # m(s, mscale) / m(s, mscale_all_dim) with the absent one as 1 / 0); the softmax by m(s, mscale_all_dim)^2
    "yarn-mscale-only": (dict(rope_parameters=yarn(8.0, 32, 0.707, None)), 1, 0.0),
    "yarn-mscale-all-dim-only": (dict(rope_parameters=yarn(8.0, 32, None, 0.707)), 1, 0.0),
    # rope_interleave false: pairs (j, j + dr/2) of the rope dims rotate (transformers' rotate_half layout)
    "rope-halves": (dict(rope_interleave=False), 1, 0.01),
    "rope-halves-dense-yarn": (dict(rope_interleave=False, first_k_dense_replace=3, q_lora_rank=None,
                                    qk_rope_head_dim=8, rope_parameters=yarn(4.0, 16, 1.0, 1.0)), 0, 0.0),
}


def build(variant, seed):
    over, depth, alpha = VARIANTS[variant]
    kw = dict(BASE)
    kw.update(over)
    v2 = variant.startswith("v2")
    if v2:
        kw.pop("tie_word_embeddings")
        cfg = DeepseekV2Config(**kw)
    else:
        kw["num_mtp_layers"] = depth
        cfg = DeepseekV3Config(**kw)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = (DeepseekV2ForCausalLM if v2 else DeepseekV3ForCausalLM)(cfg).float().eval()
    mtp = MtpModel(model, depth).float().eval() if depth else None
    gen = torch.Generator().manual_seed(seed + 1)

    def reinit(module):
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name.startswith(("embed_tokens", "shared_head")) and module is mtp:
                    continue  # tied to the main model
                if name.endswith("norm.weight") or "layernorm" in name:
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
                else:
                    scale = 3.0 if name.endswith("mlp.gate.weight") else 1.0
                    p.copy_(torch.randn(p.shape, generator=gen) * scale / math.sqrt(p.shape[-1]))
            for name, b in module.named_buffers():
                if name.endswith("e_score_correction_bias"):
                    b.copy_(0.1 * torch.randn(b.shape, generator=gen))

    reinit(model)
    if mtp is not None:
        reinit(mtp)
    return cfg, model, mtp, depth, alpha


def causal_mask(B, T):
    m = torch.full((T, T), float("-inf")).triu(1)
    return m[None, None].expand(B, 1, T, T)


def reference(model, mtp, depth, alpha, tok, tgt, cm, cmtp):
    """Our network's semantics composed from transformers modules; returns logp, mtp_logp, bal, loss."""
    routers = []

    def hook(mod, inp, out):
        routers.append(out)  # (router_logits, topk_weights, topk_indices)

    hooks = [m.register_forward_hook(hook) for m in list(model.modules()) + (list(mtp.modules()) if mtp else [])
             if type(m).__name__ in ("DeepseekV3TopkRouter", "DeepseekV2TopkRouter")]
    softmax = type(model).__name__.startswith("DeepseekV2")
    B, T = tok.shape
    h = model.model(input_ids=tok).last_hidden_state  # after the final norm
    logits = model.lm_head(h).float()
    lp = torch.log_softmax(logits, -1).gather(-1, tgt.clamp(min=0)[..., None])[..., 0] * (tgt >= 0)
    loss = (cm * lp).sum()
    mtp_lp = torch.zeros(depth, B, T)
    hprev = h
    shapes = [(B, T)] * len(routers)
    for j in range(depth):
        k, layer = j + 1, mtp.layers[j]
        Tk = T - k
        emb = model.model.embed_tokens(tok[:, k:])
        pos = torch.arange(Tk)[None].expand(B, Tk)
        cos_sin = model.model.rotary_emb(emb, pos)
        x = layer.eh_proj(torch.cat([layer.enorm(emb), layer.hnorm(hprev[:, :Tk])], -1))
        n_before = len(routers)
        hk = layer.mtp_block(x, attention_mask=causal_mask(B, Tk), position_ids=pos, position_embeddings=cos_sin)
        shapes += [(B, Tk)] * (len(routers) - n_before)
        lg = model.lm_head(layer.post_norm(hk)).float()
        t = tgt[:, k:]
        l = torch.log_softmax(lg, -1).gather(-1, t.clamp(min=0)[..., None])[..., 0] * (t >= 0)
        mtp_lp[j, :, :Tk] = l
        loss = loss + (cmtp[j, :, :Tk] * l).sum()
        hprev = hk  # the next module normalises the block output itself (paper eq. 21; vLLM)
    # complementary sequence-wise balance loss: per row, f from the routed experts, P from normalised scores
    bal = torch.zeros(())
    for (logits_r, _, idx), (b, t) in zip(routers, shapes):
        E, K = logits_r.shape[-1], idx.shape[-1]
        if softmax:  # the scores are a distribution already
            sn = torch.softmax(logits_r.float(), -1).view(b, t, E)
        else:
            s = torch.sigmoid(logits_r.float()).view(b, t, E)
            sn = s / s.sum(-1, keepdim=True)
        counts = torch.zeros(b, E).scatter_add_(1, idx.view(b, t * K), torch.ones(b, t * K))
        f = counts * E / (K * t)
        bal = bal + alpha * (f * sn.mean(1)).sum(-1).mean()
    loss = loss + bal
    for hk_ in hooks:
        hk_.remove()
    return lp, mtp_lp, bal, loss


def grads_by_name(model, mtp, L, depth):
    """Gradients under the checkpoint's per-expert names (transformers keeps experts fused)."""
    out = {}

    def put(prefix, module, skip_tied):
        for name, p in module.named_parameters():
            if skip_tied and name.startswith(("embed_tokens", "shared_head")):
                continue
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            full = prefix(name)
            if full.endswith("mlp.experts.gate_up_proj"):
                base, I = full[: -len("gate_up_proj")], g.shape[1] // 2
                for e in range(g.shape[0]):
                    out[f"{base}{e}.gate_proj.weight"] = g[e, :I]
                    out[f"{base}{e}.up_proj.weight"] = g[e, I:]
            elif full.endswith("mlp.experts.down_proj"):
                base = full[: -len("down_proj")]
                for e in range(g.shape[0]):
                    out[f"{base}{e}.down_proj.weight"] = g[e]
            else:
                out[full] = g

    put(lambda n: n, model, False)
    if mtp is not None:
        for j in range(depth):
            def name(n, j=j):
                n = n.replace("mtp_block.", "").replace("post_norm.", "shared_head.norm.")
                return f"model.layers.{L + j}.{n}"
            put(name, mtp.layers[j], True)
    return out


def save_checkpoint(d, model, mtp, L, depth):
    model.save_pretrained(d, safe_serialization=True)
    if type(model).__name__.startswith("DeepseekV2"):
        # a V2 config.json lacks the V3 keys that name its routing; add them (and no MTP)
        cp = os.path.join(d, "config.json")
        with open(cp) as f:
            c = json.load(f)
        c.update(scoring_func="softmax", num_nextn_predict_layers=0)
        with open(cp, "w") as f:
            json.dump(c, f, indent=2)
    path = os.path.join(d, "model.safetensors")
    sd = load_file(path)
    for j in range(depth):
        for n, t in mtp.layers[j].state_dict().items():
            n = n.replace("mtp_block.", "").replace("post_norm.", "shared_head.norm.")
            sd[f"model.layers.{L + j}.{n}"] = t.contiguous()  # experts stay fused: the loader unfuses them
        # the released layout also carries copies of the shared embedding and head in the MTP layer
        sd[f"model.layers.{L + j}.embed_tokens.weight"] = model.model.embed_tokens.weight.detach().clone()
        sd[f"model.layers.{L + j}.shared_head.head.weight"] = model.lm_head.weight.detach().clone()
    save_file(sd, path, metadata={"format": "pt"})


def rel(a, b):
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


def run(driver, variant, work):
    cfg, model, mtp, depth, alpha = build(variant, 1234)
    L = cfg.num_hidden_layers
    B, T = 2, 12
    g = torch.Generator().manual_seed(7)
    tok = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    tgt = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    tgt[torch.rand(B, T, generator=g) < 0.15] = -1
    cm = (torch.rand(B, T, generator=g) * 2 - 1) / (B * T)
    cmtp = (torch.rand(depth, B, T, generator=g) * 2 - 1) * 0.3 / (B * T)

    os.makedirs(work, exist_ok=True)
    save_checkpoint(work, model, mtp, L, depth)
    save_file({"tokens": tok.to(torch.int32), "targets": tgt.to(torch.int32), "dlogp": cm.float(),
               "dmtp": cmtp.float(), "alpha": torch.tensor([alpha], dtype=torch.float32)},
              os.path.join(work, "batch.safetensors"), metadata={"format": "pt"})
    r = subprocess.run([driver, "--ref", work], capture_output=True, text=True)
    if r.returncode:
        print(f"FAIL: {variant}: driver failed: {r.stderr.strip()}")
        return 1
    ours = load_file(os.path.join(work, "ours.safetensors"))

    failures = []

    def check(ok, msg):
        print(("ok: " if ok else "FAIL: ") + msg)
        if not ok:
            failures.append(msg)

    model.zero_grad()
    if mtp is not None:
        mtp.zero_grad()
    lp, mtp_lp, bal, loss = reference(model, mtp, depth, alpha, tok, tgt, cm, cmtp)
    loss.backward()

    d_lp = float(((lp.detach() - ours["logp"]).abs() / lp.detach().abs().clamp(min=1e-30)).max())
    check(d_lp <= 1e-4, f"{variant}: main log-probs, max relative difference {d_lp:.2e} (tol 1e-4)")
    got_depth = int(ours["mtp_depth"][0])
    check(got_depth == depth, f"{variant}: MTP depth {got_depth} (want {depth})")
    if depth:
        m = mtp_lp.detach()
        d_mtp = float(((m - ours["mtp_logp"]).abs() / m.abs().clamp(min=1e-30)).max())
        check(d_mtp <= 1e-4, f"{variant}: MTP log-probs, max relative difference {d_mtp:.2e} (tol 1e-4)")
    ours_loss = float((cm * ours["logp"]).sum() + (cmtp * ours.get("mtp_logp", torch.zeros_like(cmtp))).sum()
                      + ours["bal_loss"][0])
    loss = float(loss.detach())
    d_loss = abs(ours_loss - loss) / abs(loss)
    check(d_loss <= 1e-3, f"{variant}: loss {ours_loss:.8f} vs {loss:.8f} (rel {d_loss:.1e}, tol 1e-3)")
    if alpha:
        d_bal = abs(float(ours["bal_loss"][0]) - float(bal)) / float(bal)
        check(d_bal <= 1e-4, f"{variant}: balance loss {float(ours['bal_loss'][0]):.8f} vs {float(bal):.8f}")

    ref_g = grads_by_name(model, mtp, L, depth)
    ours_g = {k[5:]: v for k, v in ours.items() if k.startswith("grad.")}
    missing = sorted(set(ref_g) ^ set(ours_g))
    check(not missing, f"{variant}: same {len(ref_g)} gradient tensors" + (f" (differ: {missing[:4]})" if missing else ""))
    worst, worst_name = 0.0, ""
    for name in sorted(set(ref_g) & set(ours_g)):
        e = rel(ours_g[name], ref_g[name].float())
        if e > worst:
            worst, worst_name = e, name
    check(worst <= 1e-3, f"{variant}: parameter gradients, worst relative error {worst:.2e} ({worst_name}, tol 1e-3)")
    return 1 if failures else 0


def main():
    driver, work, variants = sys.argv[1], sys.argv[2], sys.argv[3:]
    status = 0
    for v in variants:
        status |= run(driver, v, os.path.join(work, v))
    return status


if __name__ == "__main__":
    sys.exit(main())
