"""transformers side of bench/gpu_tools.sh's decode benchmark: the checkpoint ds-pretrain wrote (so the same
weights ds-generate reads), DeepseekV3ForCausalLM in bf16 on the GPU, greedy generate with fixed lengths on a
batch of equal-length id prompts. Prefill = one forward over the prompts; decode = generate time minus that,
over batch x (new - 1) tokens (the first new token comes from the prefill), as ds-generate counts.
Writes the generated ids as JSON lines (OUT) and prints one tab-separated summary line.
Usage: gpu_generate_torch.py CKPT PROMPTS.txt NEW OUT.jsonl"""
import json
import sys
import time

import torch
import transformers
from transformers import DeepseekV3ForCausalLM


def main():
    ck, prompts, new, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    ids = [list(map(int, line.split())) for line in open(prompts) if line.strip()]
    x = torch.tensor(ids, device="cuda")
    B, T = x.shape
    model = DeepseekV3ForCausalLM.from_pretrained(ck, dtype=torch.bfloat16).cuda().eval()
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        model.generate(x, max_new_tokens=4, min_new_tokens=4, **kw)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(x)
        torch.cuda.synchronize()
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        y = model.generate(x, max_new_tokens=new, min_new_tokens=new, **kw)
        torch.cuda.synchronize()
        total = time.perf_counter() - t0
    with open(out, "w") as f:
        for i in range(B):
            f.write(json.dumps({"index": i, "tokens": y[i, T:].tolist()}) + "\n")
    decode = total - prefill
    print(f"torch\ttransformers {transformers.__version__} bf16, attn {model.config._attn_implementation}\t"
          f"prefill_tok_s {B * T / prefill:.0f}\tdecode_tok_s {B * (new - 1) / decode:.1f}\tgenerate_s {total:.3f}")


if __name__ == "__main__":
    main()
