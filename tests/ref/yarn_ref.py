"""YaRN tables of ds-extend-ctx --print-rope against transformers' DeepSeek-V3 RoPE.

usage: yarn_ref.py OURS.json [--deepseek-differs]

OURS.json is what `ds-extend-ctx --config ... --print-rope` printed: {"config": {...}, "rope": {...}}.
The config (as ds-extend-ctx would write it) is loaded into transformers' DeepseekV3Config; the inverse
frequencies and cos/sin factor come from DeepseekV3RotaryEmbedding (rope_init_fn = the yarn entry of
ROPE_INIT_FUNCTIONS), the softmax scale from DeepseekV3Attention built on the meta device. Ours must equal
transformers' in every case.

--deepseek-differs: for the configs where DeepSeek's remote code computes another cos/sin factor (exactly
one of mscale / mscale_all_dim given: it treats an absent mscale as 1 and an absent mscale_all_dim as 0,
transformers falls back to 0.1 ln s + 1), also asserts that DeepSeek's formula gives a different number,
so what docs/DESIGN.md says about the difference stays true.
"""
import json
import math
import sys

import torch
from transformers import DeepseekV3Config
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding


def deepseek_cos_factor(rs):
    """modeling_deepseek.py (DeepSeek's remote code), DeepseekV3YarnRotaryEmbedding._set_cos_sin_cache."""
    if rs.get("attention_factor"):
        return rs["attention_factor"]

    def m(s, c):
        return 1.0 if s <= 1 else 0.1 * c * math.log(s) + 1.0

    s = rs["factor"]
    return m(s, rs.get("mscale") or 1) / m(s, rs.get("mscale_all_dim") or 0)


def main():
    doc = json.load(open(sys.argv[1]))
    deepseek_differs = "--deepseek-differs" in sys.argv[2:]
    cfg_d, ours = doc["config"], doc["rope"]
    cfg = DeepseekV3Config(**cfg_d)
    rot = DeepseekV3RotaryEmbedding(cfg)
    inv_ref = rot.inv_freq.to(torch.float32).numpy()
    cos_ref = float(rot.attention_scaling)
    with torch.device("meta"):
        attn = DeepseekV3Attention(cfg, layer_idx=0)
    scale_ref = float(attn.scaling)

    inv = ours["inv_freq"]
    assert len(inv) == len(inv_ref), f"{len(inv)} frequencies vs {len(inv_ref)}"
    worst = max(abs(a - float(b)) / float(b) for a, b in zip(inv, inv_ref))
    # float32 on both sides; transformers divides once (1 / (s * base^x)), we twice ((1 / base^x) / s)
    assert worst <= 2.5e-7, f"inv_freq: max relative difference {worst:.3g}\nours {inv}\nref  {inv_ref.tolist()}"
    rel = abs(ours["softmax_scale"] - scale_ref) / scale_ref
    assert rel <= 1e-7, f"softmax scale {ours['softmax_scale']!r} vs transformers {scale_ref!r}"
    rs = cfg_d.get("rope_scaling") or {}
    assert abs(ours["cos_scale"] - cos_ref) <= 1e-7 * cos_ref, f"cos factor {ours['cos_scale']!r} vs transformers {cos_ref!r}"
    deepseek = ""
    if deepseek_differs:
        want = deepseek_cos_factor(rs)
        assert abs(cos_ref - want) > 1e-4, f"transformers now agrees with DeepSeek ({cos_ref!r}): update docs/DESIGN.md"
        deepseek = f" (DeepSeek's remote code {want:.7f})"
    # the correction range, read off the table: dims kept, dims divided by the factor
    s = rs.get("factor", 1.0)
    base = [cfg_d.get("rope_theta", 10000.0) ** (-2 * j / len(inv) / 2) for j in range(len(inv))]
    kept = sum(1 for a, b in zip(inv, base) if abs(a / b - 1) < 1e-6)
    divided = sum(1 for a, b in zip(inv, base) if abs(a * s / b - 1) < 1e-6) if s > 1 else 0
    print(f"ok: {len(inv)} frequencies (max rel diff {worst:.2g}; {kept} kept, {divided} divided by {s:g}), "
          f"softmax scale {ours['softmax_scale']:.7f}, cos factor {ours['cos_scale']:.7f}{deepseek}")


if __name__ == "__main__":
    main()
