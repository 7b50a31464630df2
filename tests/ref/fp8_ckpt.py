#!/usr/bin/env python3
"""Checkpoints for ds-quantize's tests, and an independent numpy/torch reference of its conversions.

  fp8_ckpt.py make DIR [--dtype f32|bf16]       a small checkpoint with every kind of DeepSeek-V3 tensor
                                                (dense and MoE layers, an MTP layer 2, shapes with 128-tails)
  fp8_ckpt.py quantize IN OUT [--ue8m0] [--shard-size N]
                                                numpy reference of `ds-quantize --to fp8`, written in the byte
                                                layout of docs/formats.md (safetensors + index + config.json)
  fp8_ckpt.py dequantize IN OUT --to bf16|fp32  reference of `--to bf16|fp32`: the weight_dequant of DeepSeek's
                                                inference/kernel.py transcribed to torch (fp8.float() * scale,
                                                then the default dtype), as fp8_cast_bf16.py runs it
  fp8_ckpt.py check-fp8 IN OUT                  OUT is what DeepSeek's layout requires for IN: names, dtypes,
                                                shapes, scale_inv = amax/448 per block, the untouched tensors
                                                byte-identical, and transformers' FP8 config accepted
The quantizer follows tests/ref/fp8_block.py (zero-padded 128x128 blocks, s = amax/448 kept at least 2^-126,
q = e4m3(x / s) saturating), nothing from the C code.
"""
import argparse
import json
import os
import re
import struct
import sys

import ml_dtypes
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fp8_block import dequantize, quantize  # noqa: E402

DT = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn, "F16": np.float16,
      "I64": np.int64, "I32": np.int32}
NAME = {np.dtype(v): k for k, v in DT.items()}
LINEAR = re.compile(r"^model\.layers\.\d+\.(self_attn\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
                    r"|mlp\.(shared_experts\.|experts\.\d+\.)?(gate_proj|up_proj|down_proj))\.weight$")
CARRIED = ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"]


# ---- safetensors in our byte layout (docs/formats.md), written from the spec, not with the C code ----

def read_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        a = np.frombuffer(data[b:end], dtype=DT[e["dtype"]]).reshape(e["shape"])
        tensors[name] = a
    return tensors, meta


def read_ckpt(path):
    """(ordered {name: array}, config dict or None)"""
    idx = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(idx):
        files = []
        for f in json.load(open(idx))["weight_map"].values():
            if f not in files:
                files.append(f)
        files.sort()
    else:
        files = ["model.safetensors"]
    tensors = {}
    for f in files:
        tensors.update(read_st(os.path.join(path, f))[0])
    cfg_path = os.path.join(path, "config.json")
    cfg = json.load(open(cfg_path)) if os.path.exists(cfg_path) else None
    return tensors, cfg


def header_bytes(items, meta):
    h = {"__metadata__": meta}
    off = 0
    for name, a in items:
        h[name] = {"dtype": NAME[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    text = json.dumps(h, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_ckpt(path, tensors, cfg, shard_size=0, carried=None):
    os.makedirs(path)
    items = list(tensors.items())
    shards, cur, fill = [], [], 0
    for name, a in items:  # contiguous shards: a new one when the next tensor would overflow
        if shard_size and cur and fill + a.nbytes > shard_size:
            shards.append(cur)
            cur, fill = [], 0
        cur.append((name, a))
        fill += a.nbytes
    shards.append(cur)
    names = ["model.safetensors"] if len(shards) == 1 else \
        [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    for fname, items_k in zip(names, shards):
        with open(os.path.join(path, fname), "wb") as f:
            f.write(header_bytes(items_k, {"format": "pt"}))
            for _, a in items_k:
                f.write(np.ascontiguousarray(a).tobytes())
    if len(shards) > 1:
        wm = {name: fname for fname, items_k in zip(names, shards) for name, _ in items_k}
        index = {"metadata": {"total_size": sum(a.nbytes for _, a in items)},
                 "weight_map": dict(sorted(wm.items()))}
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            f.write(json.dumps(index, indent=2, ensure_ascii=False) + "\n")
    if cfg is not None:
        with open(os.path.join(path, "config.json"), "w") as f:
            f.write(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    for name, text in (carried or {}).items():
        with open(os.path.join(path, name), "wb") as f:
            f.write(text)


def carried_files(path):
    out = {}
    for name in CARRIED:
        p = os.path.join(path, name)
        if os.path.exists(p):
            out[name] = open(p, "rb").read()
    return out


# ---- the test checkpoint ----------------------------------------------------------------------------

def make(args):
    rng = np.random.default_rng(42)
    dt = np.float32 if args.dtype == "f32" else ml_dtypes.bfloat16
    H, V, Q, KV, R, FF, MFF, E = 200, 96, 160, 64, 16, 300, 136, 4
    t = {}

    def w(name, *shape, std=0.02, dtype=None):
        t[name] = (rng.standard_normal(shape) * std).astype(np.float32).astype(dtype or dt)

    w("model.embed_tokens.weight", V, H)
    for layer in range(3):  # 0 dense, 1 MoE, 2 the MTP module (num_hidden_layers = 2)
        p = f"model.layers.{layer}."
        if layer == 2:
            w(p + "embed_tokens.weight", V, H)
            w(p + "enorm.weight", H, std=1)
            w(p + "hnorm.weight", H, std=1)
            w(p + "eh_proj.weight", H, 2 * H)
        w(p + "input_layernorm.weight", H, std=1)
        w(p + "self_attn.q_a_proj.weight", Q, H)
        w(p + "self_attn.q_a_layernorm.weight", Q, std=1)
        w(p + "self_attn.q_b_proj.weight", 4 * 24, Q)
        w(p + "self_attn.kv_a_proj_with_mqa.weight", KV + R, H)
        w(p + "self_attn.kv_a_layernorm.weight", KV, std=1)
        w(p + "self_attn.kv_b_proj.weight", 4 * (8 + 16), KV)
        w(p + "self_attn.o_proj.weight", H, 4 * 16)
        w(p + "post_attention_layernorm.weight", H, std=1)
        if layer == 0:
            for n in ("gate_proj", "up_proj"):
                w(p + f"mlp.{n}.weight", FF, H)
            w(p + "mlp.down_proj.weight", H, FF)
        else:
            w(p + "mlp.gate.weight", E, H)
            w(p + "mlp.gate.e_score_correction_bias", E, dtype=np.float32)
            for e in [f"experts.{i}." for i in range(E)] + ["shared_experts."]:
                w(p + f"mlp.{e}gate_proj.weight", MFF, H)
                w(p + f"mlp.{e}up_proj.weight", MFF, H)
                w(p + f"mlp.{e}down_proj.weight", H, MFF)
        if layer == 2:
            w(p + "shared_head.norm.weight", H, std=1)
            w(p + "shared_head.head.weight", V, H)
    w("model.norm.weight", H, std=1)
    w("lm_head.weight", V, H)
    t["model.layers.0.mlp.up_proj.weight"][3:131, 5:133] = 0  # most of a block zero; still amax > 0
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = json.load(open(os.path.join(root, "share", "configs", "tiny.json")))
    # the sizes of the tensors above (ds-quantize checks the config against them): 4 heads of
    # qk_nope 8 + qk_rope 16, v_head 16
    cfg.update(hidden_size=H, vocab_size=V, q_lora_rank=Q, kv_lora_rank=KV, qk_nope_head_dim=8, qk_rope_head_dim=R,
               v_head_dim=16, intermediate_size=FF, moe_intermediate_size=MFF, n_routed_experts=E, num_attention_heads=4)
    cfg["torch_dtype"] = "float32" if args.dtype == "f32" else "bfloat16"
    cfg.setdefault("pad_token_id", None)  # our config writer makes every known key explicit
    write_ckpt(args.dir, t, cfg, carried={"tokenizer.json": b'{"model": {"type": "BPE"}}\n',
                                         "generation_config.json": b'{"do_sample": false}\n'})


# ---- the reference conversions -----------------------------------------------------------------------

def quantize_cmd(args):
    tensors, cfg = read_ckpt(args.input)
    out = {}
    for name, a in tensors.items():
        if LINEAR.match(name) and a.dtype != ml_dtypes.float8_e4m3fn:
            q, s = quantize(a.astype(np.float32), 128, 128, args.ue8m0)
            out[name] = q.view(ml_dtypes.float8_e4m3fn)
            out[name + "_scale_inv"] = s
        else:
            out[name] = a
    # DeepSeek's keys, values and order (V3's config.json; V3.1 puts scale_fmt before weight_block_size)
    qc = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8"}
    if args.ue8m0:
        qc["scale_fmt"] = "ue8m0"
    qc["weight_block_size"] = [128, 128]
    cfg["quantization_config"] = qc
    write_ckpt(args.output, out, cfg, args.shard_size, carried_files(args.input))


def dequantize_cmd(args):
    import torch
    tensors, cfg = read_ckpt(args.input)
    target = torch.bfloat16 if args.to == "bf16" else torch.float32
    out = {}
    for name, a in tensors.items():
        if name.endswith("_scale_inv"):
            continue
        if a.dtype == ml_dtypes.float8_e4m3fn:
            x = torch.from_numpy(a.view(np.uint8).copy()).view(torch.float8_e4m3fn)
            s = torch.from_numpy(tensors[name + "_scale_inv"].copy())
            m, n = x.shape
            # weight_dequant: each 128x128 block times its scale, in float32, stored in the default dtype
            y = x.to(torch.float32) * s.repeat_interleave(128, 0)[:m].repeat_interleave(128, 1)[:, :n]
            y = y.to(target)
        elif name.endswith(".e_score_correction_bias") or a.dtype not in (np.float32, ml_dtypes.bfloat16):
            y = torch.from_numpy(np.ascontiguousarray(a).astype(np.float32))
        else:
            y = torch.from_numpy(np.ascontiguousarray(a).astype(np.float32)).to(target)
        out[name] = y.view(torch.uint16).numpy().view(ml_dtypes.bfloat16) if y.dtype == torch.bfloat16 else y.numpy()
    cfg.pop("quantization_config", None)
    cfg["torch_dtype"] = "bfloat16" if args.to == "bf16" else "float32"
    write_ckpt(args.output, out, cfg, 0, carried_files(args.input))


def check_fp8(args):
    src, _ = read_ckpt(args.input)
    q, cfg = read_ckpt(args.output)
    problems = []
    want = []
    for name, a in src.items():
        want.append(name)
        if LINEAR.match(name):
            want.append(name + "_scale_inv")
    if list(q) != want:
        problems.append("tensor names or order differ from DeepSeek's layout")
    for name, a in src.items():
        b = q.get(name)
        if b is None:
            continue
        if LINEAR.match(name):
            s = q[name + "_scale_inv"]
            r, c = a.shape
            if b.dtype != ml_dtypes.float8_e4m3fn or s.dtype != np.float32 or s.shape != (-(-r // 128), -(-c // 128)):
                problems.append(f"{name}: {b.dtype} {s.dtype} {s.shape}")
                continue
            x = a.astype(np.float32)
            for i in range(s.shape[0]):
                for j in range(s.shape[1]):
                    amax = np.abs(x[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]).max()
                    if s[i, j] != max(np.float32(amax) / np.float32(448), np.float32(2.0**-126)):
                        problems.append(f"{name}_scale_inv[{i},{j}] = {s[i, j]!r}, amax/448 = {amax / 448!r}")
            err = np.abs(dequantize(b.view(np.uint8), s, 128, 128) - x)
            sf = np.repeat(np.repeat(s, 128, 0), 128, 1)[:r, :c]
            bound = sf * np.maximum(np.abs(x / sf) * 2.0 ** -4, 2.0 ** -10)  # half an E4M3 ulp
            if (err > bound * (1 + 1e-6)).any():
                problems.append(f"{name}: dequantization error beyond half an E4M3 ulp")
        elif b.dtype != a.dtype or b.tobytes() != a.tobytes():
            problems.append(f"{name}: not untouched")
    qc = cfg.get("quantization_config")
    if qc != {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}:
        problems.append(f"quantization_config {qc}")
    try:  # transformers' own reading of the FP8 config
        from transformers import DeepseekV3Config
        c = DeepseekV3Config.from_pretrained(args.output)
        if c.quantization_config["weight_block_size"] != [128, 128]:
            problems.append("transformers reads a different weight_block_size")
    except ImportError:
        pass
    for p in problems[:20]:
        print(p, file=sys.stderr)
    sys.exit(1 if problems else 0)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    m.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    q = sub.add_parser("quantize")
    q.add_argument("input")
    q.add_argument("output")
    q.add_argument("--ue8m0", type=int, default=0)
    q.add_argument("--shard-size", type=int, default=0)
    d = sub.add_parser("dequantize")
    d.add_argument("input")
    d.add_argument("output")
    d.add_argument("--to", required=True, choices=["bf16", "fp32"])
    c = sub.add_parser("check-fp8")
    c.add_argument("input")
    c.add_argument("output")
    args = ap.parse_args()
    {"make": make, "quantize": quantize_cmd, "dequantize": dequantize_cmd, "check-fp8": check_fp8}[args.cmd](args)


if __name__ == "__main__":
    main()
