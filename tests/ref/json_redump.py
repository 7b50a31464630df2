"""Write random doubles and strings to IN, or check that OUT (our ds_json_dump of IN) equals
Python's json.dumps(..., separators=(",", ":"), ensure_ascii=False).

usage: json_redump.py make IN  |  json_redump.py check IN OUT
"""
import json
import random
import struct
import sys

if sys.argv[1] == "make":
    rng = random.Random(7)
    vals = []
    for _ in range(3000):
        bits = rng.getrandbits(64)
        x = struct.unpack("<d", struct.pack("<Q", bits))[0]
        if x != x or x in (float("inf"), float("-inf")):
            continue
        vals.append(x)
    vals += [rng.uniform(-1, 1) * 10 ** rng.randint(-12, 20) for _ in range(3000)]
    vals += [0.1, 0.2, 0.3, 1e-06, 1e16, 1e15, 123456789012345678.0, 5e-324, 2.5, 100.0, -0.0]
    strs = ["".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0, 31), rng.randint(160, 0x2FFF)])) for _ in range(12))
            for _ in range(200)]
    json.dump({"reals": vals, "ints": [rng.randint(-2**63, 2**63 - 1) for _ in range(100)], "strs": strs, "nested": {"a": [], "b": {}}},
              open(sys.argv[2], "w"))
    sys.exit(0)

src = json.load(open(sys.argv[2]))
ours = open(sys.argv[3], encoding="utf-8").read()
want = json.dumps(src, separators=(",", ":"), ensure_ascii=False)
if ours == want:
    print("ok: identical")
    sys.exit(0)
i = next(i for i in range(min(len(ours), len(want))) if ours[i] != want[i])
print(f"first difference at {i}: ours {ours[max(0, i - 40):i + 40]!r} python {want[max(0, i - 40):i + 40]!r}")
sys.exit(1)
