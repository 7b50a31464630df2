"""PyTorch side of bench/gpu_train.sh: the same ~1.2B DeepSeek-V3-shaped MoE (bench/gpu_train.cu's
bench_config) built by transformers' DeepseekV3ForCausalLM, trained with fp32 master weights under bf16
autocast, fused AdamW and gradient clipping: random tokens, median step time.
Usage: gpu_train_torch.py [batch] [seq] [steps]"""
import sys
import time

import torch
import transformers
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM


def main():
    B = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    T = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    cfg = DeepseekV3Config(vocab_size=32000, hidden_size=1024, intermediate_size=2816, moe_intermediate_size=512,
                           num_hidden_layers=12, first_k_dense_replace=1, num_attention_heads=8,
                           num_key_value_heads=8, n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6,
                           n_group=8, topk_group=4, q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64,
                           qk_rope_head_dim=32, v_head_dim=64, max_position_embeddings=4096, routed_scaling_factor=2.5,
                           norm_topk_prob=True, rope_interleave=True, use_cache=False)
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(cfg).cuda()
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    x = torch.randint(0, cfg.vocab_size, (B, T), device="cuda")
    times = []
    for s in range(steps + 2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) * 1e3
        print(f"torch step {s + 1}: {dt:.1f} ms, loss {loss.item():.4f}", file=sys.stderr, flush=True)
        if s >= 2:
            times.append(dt)
    times.sort()
    ms = times[len(times) // 2]
    print(f"torch\ttransformers {transformers.__version__}, {n_params / 1e9:.3f}B params, "
          f"attn {model.config._attn_implementation}\tstep_ms {ms:.1f}\ttok_s {B * T / (ms / 1e3):.0f}")


if __name__ == "__main__":
    main()
