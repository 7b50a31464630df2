"""PyTorch side of bench/gpu_gemm.sh: torch.matmul in bf16 (and torch._scaled_mm with 1x128 / 128x128
block scales where this PyTorch supports it) on the same shapes, median of CUDA-event timings.
Prints TSV: shape, M, N, K, torch_bf16_ms, torch_bf16_tflops, torch_fp8_ms, torch_fp8_tflops."""
import sys

import torch

SHAPES = [("q_a", 4096, 1536, 7168), ("q_b", 4096, 24576, 1536), ("kv_a", 4096, 576, 7168),
          ("kv_b", 4096, 32768, 512), ("o", 4096, 7168, 16384), ("dense_up", 4096, 18432, 7168),
          ("dense_down", 4096, 7168, 18432), ("expert_up", 4096, 2048, 7168),
          ("expert_down", 4096, 7168, 2048), ("square", 8192, 8192, 8192)]


def median_ms(fn, reps):
    for _ in range(3):
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


def blockwise_fp8(x, w):
    """x [M,K] 1x128 tiles, w [N,K] 128x128 blocks, scales as torch._scaled_mm wants them."""
    m, k = x.shape
    n = w.shape[0]
    xa = x.float().view(m, k // 128, 128).abs().amax(-1).clamp(min=1e-4) / 448
    xq = (x.float().view(m, k // 128, 128) / xa[..., None]).view(m, k).to(torch.float8_e4m3fn)
    wb = w.float().view(n // 128, 128, k // 128, 128).abs().amax(dim=(1, 3)).clamp(min=1e-4) / 448
    wq = (w.float().view(n // 128, 128, k // 128, 128) / wb[:, None, :, None]).view(n, k).to(torch.float8_e4m3fn)
    sa = xa.t().contiguous().t()  # (M, K/128), stride (1, M)
    sb = wb.t()                   # b = wq.t() (K, N): b.t() = wq has scales wb (N/128, K/128) row-major
    return lambda: torch._scaled_mm(xq, wq.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    torch.manual_seed(0)
    print("shape\tM\tN\tK\ttorch_bf16_ms\ttorch_bf16_tflops\ttorch_fp8_ms\ttorch_fp8_tflops")
    for name, m, n, k in SHAPES:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        flop = 2.0 * m * n * k
        t16 = median_ms(lambda: torch.matmul(x, w.t()), reps)
        t8 = float("nan")
        if n % 128 == 0:
            try:
                fn = blockwise_fp8(x, w)
                fn()
                t8 = median_ms(fn, reps)
            except Exception as e:  # not every PyTorch build routes blockwise scales to cuBLASLt
                print(f"# {name}: torch._scaled_mm blockwise: {type(e).__name__}: {str(e)[:120]}", file=sys.stderr)
        print(f"{name}\t{m}\t{n}\t{k}\t{t16:.4f}\t{flop / t16 / 1e9:.1f}\t{t8:.4f}\t{flop / t8 / 1e9:.1f}", flush=True)
        del x, w
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
