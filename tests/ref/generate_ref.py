#!/usr/bin/env python3
"""transformers as the reference for ds-generate (tests/ref/generate.bats, bench/generate.sh).

  generate_ref.py score [--w8a8] [CKPT] < id lines  -> one JSON line per input: {"logprobs": [lp_1, ...]}
                                                       lp_t = log p(token_t | tokens before), fp32 forward;
                                                       without CKPT each line is "CKPT<TAB>ids" (models
                                                       are loaded once and kept; "w8a8:CKPT" for W8A8).
                                                       --w8a8: DeepSeek's FP8 inference numerics (w8a8
                                                       below)
  generate_ref.py greedy CKPT N         < id lines  -> N greedily generated ids per input (no EOS stop)
  generate_ref.py save CONFIG OUT [STD] a random DeepseekV3ForCausalLM (transformers' own init, weights std STD,
                                        default the config's initializer_range) saved with save_pretrained
  generate_ref.py bench CKPT P N B [bf16]  prefill/decode timing of model.generate: B random prompts of P
                                        tokens, N new tokens, greedy; prints one JSON line; bf16: the model
                                        loaded with torch_dtype=torch.bfloat16 (as DeepSeek's users run it)

CKPT is a checkpoint directory (config.json + model.safetensors) loaded with
DeepseekV3ForCausalLM.from_pretrained in float32 on the CPU. Threads: $DS_THREADS (default 2).
"""
import json
import os
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from transformers import DeepseekV3ForCausalLM  # noqa: E402


def load(path, fp8=False, dtype=torch.float32):
    torch.set_num_threads(int(os.environ.get("DS_THREADS", "2")))
    m = DeepseekV3ForCausalLM.from_pretrained(path, torch_dtype=dtype)
    m.eval()
    if fp8:
        w8a8(m)
    return m


# ---- W8A8: DeepSeek-V3's FP8 inference (inference/kernel.py act_quant + fp8_gemm), written from the recipe:
# activations in 1x128 tiles along the input dimension, weights in 128x128 blocks, E4M3 with scale
# amax / 448 per tile (saturating cast; kept at least 2^-126 where DeepSeek's act_quant floors amax at 1e-4:
# docs/DESIGN.md "FP8"), products summed per 128-wide block and scaled by both
# scales (float64 here: the exact block dots ours rounds to float32 differ from it by ~1e-7). Every Linear of
# the decoder layers goes through it except kv_b_proj (absorbed attention uses the dequantized weight), the
# router and lm_head, which stay float32.

FP8_LINEARS = ("q_a_proj", "q_b_proj", "q_proj", "kv_a_proj_with_mqa", "o_proj", "gate_proj", "up_proj", "down_proj")


def fp8_tiles(x, br, bc):
    """x [R, C] float32 -> (codes as float64 [R', C'] zero-padded to whole tiles, scales [R'/br, C'/bc])"""
    R, C = x.shape
    xp = torch.nn.functional.pad(x, (0, -C % bc, 0, -R % br))
    t = xp.reshape(xp.shape[0] // br, br, xp.shape[1] // bc, bc)
    s = torch.clamp(t.abs().amax(dim=(1, 3)) / 448.0, min=2.0**-126)  # float32, as the quantizers compute it
    q = (t / s[:, None, :, None]).clamp(-448, 448).to(torch.float8_e4m3fn).to(torch.float64)
    return q.reshape(xp.shape), s.double()


def fp8_linear(x, w):
    """y = x w^T with x quantized per token in 1x128 tiles, w in 128x128 blocks"""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).float()
    n, out = x2.shape[0], w.shape[0]
    xq, xs = fp8_tiles(x2, 1, 128)
    wq, ws = fp8_tiles(w.float(), 128, 128)
    kb = xq.shape[1] // 128
    dots = torch.einsum("nkc,okc->nko", xq.reshape(n, kb, 128), wq.reshape(wq.shape[0], kb, 128))
    wsr = ws.repeat_interleave(128, dim=0)  # [out', kb]
    y = (dots * xs[:, :, None] * wsr.t()[None, :, :]).sum(dim=1)[:, :out]
    return y.float().reshape(*shape[:-1], out)


def w8a8(model):
    import types

    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(mod, torch.nn.Linear) and leaf in FP8_LINEARS:
            mod.forward = types.MethodType(lambda self, x: fp8_linear(x, self.weight), mod)
        elif type(mod).__name__ == "DeepseekV3Experts":
            mod.forward = types.MethodType(fp8_experts_forward, mod)


def fp8_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """the routed experts with gate and up quantized as the separate matrices they are in checkpoints"""
    out = torch.zeros_like(hidden_states)
    I = self.intermediate_dim
    for e in range(self.num_experts):
        tok, slot = torch.where(top_k_index == e)
        if len(tok) == 0:
            continue
        x = hidden_states[tok]
        gu = self.gate_up_proj[e]
        h = self.act_fn(fp8_linear(x, gu[:I])) * fp8_linear(x, gu[I:])
        y = fp8_linear(h, self.down_proj[e]) * top_k_weights[tok, slot, None]
        out.index_add_(0, tok, y.to(out.dtype))
    return out


def id_lines():
    for line in sys.stdin:
        if line.strip():
            yield [int(x) for x in line.split()]


def score(path, fp8=False):
    models = {}
    with torch.no_grad():
        for line in sys.stdin:
            if not line.strip():
                continue
            ck, ids = (path, line) if path else line.split("\t", 1)
            if ck not in models:  # "w8a8:CKPT" in a line: that checkpoint under W8A8
                models[ck] = load(ck[5:], True) if ck.startswith("w8a8:") else load(ck, fp8)
            m = models[ck]
            ids = [int(x) for x in ids.split()]
            x = torch.tensor([ids])
            logits = m(x).logits[0].float()
            lp = torch.log_softmax(logits, dim=-1)
            out = [lp[t - 1, ids[t]].item() for t in range(1, len(ids))]
            print(json.dumps({"logprobs": out}), flush=True)


def greedy(path, n):
    m = load(path)
    with torch.no_grad():
        for ids in id_lines():
            x = torch.tensor([ids])
            y = m.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                           pad_token_id=0, attention_mask=torch.ones_like(x))
            print(" ".join(str(t) for t in y[0, len(ids):].tolist()), flush=True)


def save(config, out, std=None):
    import json as _json

    from transformers import DeepseekV3Config

    cfg = _json.load(open(config))
    if std:
        cfg["initializer_range"] = float(std)
    torch.manual_seed(0)
    m = DeepseekV3ForCausalLM(DeepseekV3Config(**cfg))
    with torch.no_grad():  # random expert biases, so the bias path is exercised
        for name, buf in m.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.05 * torch.randn_like(buf))
    m.save_pretrained(out)


def bench(path, p, n, b, dtype="fp32"):
    m = load(path, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    V = m.config.vocab_size
    g = torch.Generator().manual_seed(0)
    x = torch.randint(2, V, (b, p), generator=g)
    mask = torch.ones_like(x)
    with torch.no_grad():
        m.generate(x[:, :8], max_new_tokens=2, do_sample=False, eos_token_id=None, pad_token_id=0,
                   attention_mask=mask[:, :8])  # warm-up
        t0 = time.perf_counter()
        m(x, attention_mask=mask)  # prefill alone
        t1 = time.perf_counter()
        m.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0,
                   attention_mask=mask)
        t2 = time.perf_counter()
    prefill = t1 - t0
    decode = (t2 - t1) - prefill  # generate = prefill + n-1 decode steps (+ sampling)
    print(json.dumps({"prefill_tokens_per_s": b * p / prefill, "decode_tokens_per_s": b * (n - 1) / decode,
                      "prefill_s": prefill, "generate_s": t2 - t1, "threads": torch.get_num_threads(),
                      "dtype": str(next(m.parameters()).dtype)}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "score":
        args = [a for a in sys.argv[2:] if a != "--w8a8"]
        score(args[0] if args else None, "--w8a8" in sys.argv[2:])
    elif cmd == "greedy":
        greedy(sys.argv[2], int(sys.argv[3]))
    elif cmd == "save":
        save(*sys.argv[2:5])
    elif cmd == "bench":
        bench(sys.argv[2], *map(int, sys.argv[3:6]), *sys.argv[6:7])
    else:
        sys.exit("usage: generate_ref.py score|greedy|bench CKPT ...")
