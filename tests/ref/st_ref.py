"""Reference side of tests/ref/safetensors.bats: Python's safetensors package (and huggingface_hub's
sharded writer, which transformers uses) against our reader and writer.

  st_ref.py write-py DIR          files written by Python: DIR/all.safetensors (every dtype, metadata),
                                  DIR/np.safetensors (numpy writer), DIR/shards/ (save_torch_state_dict,
                                  3+ shards + index); DIR/expected-*.json describe them
  st_ref.py check EXPECTED DUMP   our dump (test_safetensors reference_dump) equals EXPECTED byte for byte
  st_ref.py spec SPEC [MAX]       a random tensor set for our writer (bytes, and float32 values to convert),
                                  to be split into shards of MAX bytes
  st_ref.py verify SPEC PATH      Python loads what we wrote (file or index) and finds the same bytes; our
                                  float32 -> BF16/F16 conversion equals torch's
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file as np_save
from safetensors.torch import save_file

DT = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
      torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64", torch.int32: "I32",
      torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
FROM = {v: k for k, v in DT.items()}


def raw(t):
    t = t.contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def describe(tensors, meta):
    out = {"meta": meta, "tensors": {}}
    for name, t in tensors.items():
        d = {"dtype": DT[t.dtype], "shape": list(t.shape), "hex": raw(t).hex()}
        if t.dtype in (torch.float32, torch.bfloat16, torch.float16):
            d["f32hex"] = raw(t.float()).hex()
        out["tensors"][name] = d
    return out


def every_dtype(g):
    ts = {}
    for i, dt in enumerate(DT):
        shape = [(2, 3), (5,), (1, 2, 2), (), (0, 3)][i % 5]
        if dt == torch.bool:
            t = torch.randint(0, 2, shape, generator=g).bool()
        elif dt.is_floating_point:
            t = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dt)
        else:
            info = torch.iinfo(dt)
            t = torch.randint(max(info.min, -1000), min(info.max, 1000), shape, generator=g, dtype=torch.int64).to(dt)
        ts[f"t.{DT[dt].lower()}"] = t
    # specials: NaN, Inf, subnormals, -0 in the float types
    ts["special.f32"] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-40, 3.4e38])
    ts["special.bf16"] = ts["special.f32"].to(torch.bfloat16)
    ts["special.f16"] = torch.tensor([float("nan"), float("inf"), -0.0, 6e-8, 65504.0], dtype=torch.float16)
    return ts


cmd = sys.argv[1]
if cmd == "write-py":
    d = sys.argv[2]
    g = torch.Generator().manual_seed(1)
    ts = every_dtype(g)
    meta = {"format": "pt", "config": json.dumps({"vocab_size": 512}), "note": "ünïcödé \"quoted\""}
    save_file(ts, f"{d}/all.safetensors", metadata=meta)
    json.dump(describe(ts, meta), open(f"{d}/expected-all.json", "w"))

    rng = np.random.default_rng(2)
    nts = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.integers(-5, 5, (7,)).astype(np.int16),
           "c": rng.standard_normal((2,)).astype(np.float64)}
    np_save(nts, f"{d}/np.safetensors")
    json.dump(describe({k: torch.from_numpy(v) for k, v in nts.items()}, {}), open(f"{d}/expected-np.json", "w"))

    from huggingface_hub import save_torch_state_dict
    sd = {f"model.layers.{i}.w": torch.randn(64, 64, generator=g).to(torch.bfloat16) for i in range(6)}
    sd["model.embed_tokens.weight"] = torch.randn(300, 64, generator=g)  # larger than a shard
    sd["model.layers.0.gate.e_score_correction_bias"] = torch.randn(8, generator=g)
    os.makedirs(f"{d}/shards", exist_ok=True)
    save_torch_state_dict(sd, f"{d}/shards", max_shard_size=20000)
    n = len([f for f in os.listdir(f"{d}/shards") if f.startswith("model-")])
    assert n >= 3, n
    json.dump(describe(sd, {"format": "pt"}), open(f"{d}/expected-shards.json", "w"))

elif cmd == "check":
    exp = json.load(open(sys.argv[2]))
    ours = json.load(open(sys.argv[3]))
    problems = []
    if "error" in ours:
        problems.append("our reader failed: " + ours["error"])
    if exp["meta"] and ours["meta"] != exp["meta"]:
        problems.append(f"metadata: ours {ours['meta']} expected {exp['meta']}")
    got = {t["name"]: t for t in ours["tensors"]}
    if set(got) != set(exp["tensors"]):
        problems.append(f"names differ: {sorted(set(got) ^ set(exp['tensors']))}")
    for name, e in exp["tensors"].items():
        o = got.get(name)
        if o is None:
            continue
        for k in ("dtype", "shape", "hex"):
            if k in e and o.get(k) != e[k]:
                problems.append(f"{name}: {k} differs")
        if "f32hex" in e:  # our conversion to float32 vs torch's .float(); any NaN matches any NaN
            a = np.frombuffer(bytes.fromhex(o.get("f32hex", "")), dtype=np.float32)
            b = np.frombuffer(bytes.fromhex(e["f32hex"]), dtype=np.float32)
            same = a.shape == b.shape and np.all((a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b)))
            if not same:
                problems.append(f"{name}: float32 conversion differs")
    for p in problems:
        print(p)
    print(f"{len(exp['tensors'])} tensors: {'ok' if not problems else 'MISMATCH'}")
    sys.exit(1 if problems else 0)

elif cmd == "spec":
    g = torch.Generator().manual_seed(3)
    tensors = []
    for i, (name, t) in enumerate(every_dtype(g).items()):
        tensors.append({"name": name, "dtype": DT[t.dtype], "shape": list(t.shape), "hex": raw(t).hex()})
    # float32 values our writer converts (ties, NaN, Inf, subnormals, overflow to inf in f16)
    vals = (torch.randn(1000, generator=g, dtype=torch.float64) * 10).float().tolist()
    vals += [1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -11, 1.0 + 3 * 2 ** -11, 65520.0, 65519.0, 1e-8, -3e-5,
             float("inf"), -float("inf"), 0.0, -0.0, 3.4e38, 1e-40]
    for dt in ("BF16", "F16", "F32"):
        tensors.append({"name": f"conv.{dt.lower()}", "dtype": dt, "shape": [len(vals)],
                        "f32hex": raw(torch.tensor(vals, dtype=torch.float32)).hex()})
    max_shard = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    json.dump({"meta": {"config": "{\"hidden_size\": 64}", "tokenizer": "x" * 1000}, "max_shard_bytes": max_shard,
               "tensors": tensors}, open(sys.argv[2], "w"))

elif cmd == "verify":
    spec = json.load(open(sys.argv[2]))
    path = sys.argv[3]
    problems = []
    if path.endswith(".json"):
        index = json.load(open(path))
        files = {name: os.path.join(os.path.dirname(path), f) for name, f in index["weight_map"].items()}
        total = index["metadata"]["total_size"]
    else:
        files = {t["name"]: path for t in spec["tensors"]}
        total = None
    size = 0
    for t in spec["tensors"]:
        with safe_open(files[t["name"]], framework="pt") as f:
            meta = f.metadata()
            if meta.get("format") != "pt" or meta.get("config") != spec["meta"]["config"]:
                problems.append(f"metadata of {files[t['name']]}: {meta}")
            x = f.get_tensor(t["name"])
        if DT[x.dtype] != t["dtype"] or list(x.shape) != t["shape"]:
            problems.append(f"{t['name']}: {DT[x.dtype]} {list(x.shape)}")
            continue
        size += x.numel() * x.element_size()
        if "hex" in t and raw(x).hex() != t["hex"]:
            problems.append(f"{t['name']}: bytes differ")
        if "f32hex" in t:
            f32 = torch.frombuffer(bytearray.fromhex(t["f32hex"]), dtype=torch.float32)
            want = f32.to(FROM[t["dtype"]])
            if raw(x) != raw(want):
                bad = (x.view(torch.int16 if x.element_size() == 2 else torch.int32) !=
                       want.view(torch.int16 if x.element_size() == 2 else torch.int32)).nonzero()[:5].flatten().tolist()
                problems.append(f"{t['name']}: float32 conversion differs from torch at {bad}: "
                                f"{[f32[i].item() for i in bad]}")
    if total is not None and total != size:
        problems.append(f"index total_size {total} != {size}")
    # the header is padded to 8 bytes and says format pt
    for p in sorted(set(files.values())):
        with open(p, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            head = fh.read(n)
        if n % 8 or not head.rstrip(b" ").endswith(b"}"):
            problems.append(f"{p}: header length {n} not padded with spaces to 8")
    for p in problems:
        print(p)
    print(f"{len(spec['tensors'])} tensors in {len(set(files.values()))} file(s): {'ok' if not problems else 'MISMATCH'}")
    sys.exit(1 if problems else 0)
