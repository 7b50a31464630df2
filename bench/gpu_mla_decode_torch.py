"""PyTorch side of bench/gpu_mla_decode.sh: the same decode attention in eager PyTorch (bf16 matmuls,
softmax in fp32, causal offset for 2 query tokens) over a contiguous [batch, kv_len, 576] cache, median
of CUDA-event timings. Prints TSV: batch, q_len, heads, kv_len, torch_ms."""
import sys

import torch


def median_ms(fn, reps):
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def decode(q, kv, q_len, scale):
    # q [B, q_len*H, 576] (rows ordered j*H + h), kv [B, L, 576]
    s = torch.matmul(q, kv.transpose(1, 2)).float() * scale
    if q_len > 1:
        b, rows, length = s.shape
        h = rows // q_len
        j = torch.arange(rows, device=q.device) // h
        t = torch.arange(length, device=q.device)
        s = s.masked_fill(t[None, :] >= (length - q_len + 1 + j)[:, None], float("-inf"))
    p = torch.softmax(s, dim=-1).to(torch.bfloat16)
    return torch.matmul(p, kv[..., :512])


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    torch.manual_seed(0)
    batch = 128
    print("batch\tq_len\theads\tkv_len\ttorch_ms")
    kv_all = torch.randn(batch, 8192, 576, device="cuda", dtype=torch.bfloat16)
    for q_len in (1, 2):
        for length in (4096, 8192):
            kv = kv_all[:, :length].contiguous()
            for heads in (16, 32, 64, 128):
                q = torch.randn(batch, q_len * heads, 576, device="cuda", dtype=torch.bfloat16)
                ms = median_ms(lambda: decode(q, kv, q_len, 0.1352338), reps)
                print(f"{batch}\t{q_len}\t{heads}\t{length}\t{ms:.4f}", flush=True)
                del q
            del kv
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
