"""An independent reader and writer of the token shard layout documented in docs/formats.md, using
the zstd command-line tool for the frames and a from-the-definition CRC-32C. tests/ref/shard.bats
checks that our C writer produces what this reader expects and that our C reader accepts what this
writer produces.

  shard_ref.py tokens OUT.u32 VOCAB EOS SEED    random documents (uint32 ids, 0xFFFFFFFF after each);
                                                OUT.u32.expected: the token stream with EOS
  shard_ref.py decode SHARD OUT.u32             check every field, write the tokens; prints the info
  shard_ref.py encode IN.u32 OUT VOCAB EOS FRAME [streamed]
"""
import random
import struct
import subprocess
import sys

POLY = 0x82F63B78
TABLE = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ POLY if c & 1 else c >> 1
    TABLE.append(c)


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = (crc >> 8) ^ TABLE[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


def zstd(args, data):
    return subprocess.run(["zstd", "-q", "-c"] + args, input=data, stdout=subprocess.PIPE, check=True).stdout


def fail(msg):
    print("MISMATCH:", msg)
    sys.exit(1)


cmd = sys.argv[1]
if cmd == "tokens":
    out, vocab, eos, seed = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    rng = random.Random(seed)
    ids, stream = [], []
    for d in range(300):
        n = rng.choice([0, 1, rng.randint(1, 50), rng.randint(100, 2000)])
        doc = [x for x in (rng.randrange(vocab) for _ in range(n)) if x != eos]
        ids += doc + [0xFFFFFFFF]
        stream += doc + [eos]
    open(out, "wb").write(struct.pack(f"<{len(ids)}I", *ids))
    open(out + ".expected", "wb").write(struct.pack(f"<{len(stream)}I", *stream))

elif cmd == "decode":
    b = open(sys.argv[2], "rb").read()
    if b[:8] != b"DSTOKENS":
        fail("header magic")
    version, flags, width, vocab, eos, frame = struct.unpack_from("<6I", b, 8)
    h_tokens, h_docs, h_frames = struct.unpack_from("<3Q", b, 32)
    if struct.unpack_from("<I", b, 60)[0] != crc32c(b[:60]) or version != 1 or width != (2 if vocab <= 65536 else 4):
        fail(f"header fields: version {version} width {width} vocab {vocab}")
    t = b[-64:]
    if t[:8] != b"DSTOKEND" or struct.unpack_from("<I", t, 60)[0] != crc32c(t[:60]):
        fail("trailer")
    n_tokens, n_docs, n_frames, index_offset = struct.unpack_from("<4Q", t, 8)
    index = b[index_offset:-64]
    if struct.unpack_from("<I", t, 40)[0] != crc32c(index) or index[:4] != b"DSIX" or \
            struct.unpack_from("<Q", index, 8)[0] != n_frames or len(index) != 16 + 32 * n_frames:
        fail("index block")
    if flags == 0 and (h_tokens, h_docs, h_frames) != (n_tokens, n_docs, n_frames):
        fail("header counts")
    if flags not in (0, 1):
        fail("flags")
    tokens, pos, first = [], 64, 0
    for k in range(n_frames):
        off, ft, n, csize, neos, crc = struct.unpack_from("<QQIIII", index, 16 + 32 * k)
        if off != pos or ft != first or (k + 1 < n_frames and n != frame) or not 0 < n <= frame:
            fail(f"entry {k}")
        rec = struct.unpack_from("<4sIII", b, off)
        if rec != (b"DSFR", n, csize, crc):
            fail(f"record {k}")
        raw = zstd(["-d"], b[off + 16: off + 16 + csize])
        if len(raw) != n * width or crc32c(raw) != crc:
            fail(f"frame {k} size/checksum")
        ids = struct.unpack(f"<{n}{'H' if width == 2 else 'I'}", raw)
        if sum(1 for x in ids if x == eos) != neos or max(ids) >= vocab:
            fail(f"frame {k} eos/vocab")
        tokens += ids
        pos = off + 16 + csize
        first += n
    if pos != index_offset or len(tokens) != n_tokens or tokens.count(eos) != n_docs:
        fail("totals")
    open(sys.argv[3], "wb").write(struct.pack(f"<{len(tokens)}I", *tokens))
    print(f"ok: vocab={vocab} eos={eos} width={width} tokens={n_tokens} docs={n_docs} frames={n_frames} streamed={flags}")

elif cmd == "encode":
    src, out, vocab, eos, frame = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    streamed = len(sys.argv) > 7
    raw_ids = open(src, "rb").read()
    ids = [eos if x == 0xFFFFFFFF else x for x in struct.unpack(f"<{len(raw_ids) // 4}I", raw_ids)]
    width = 2 if vocab <= 65536 else 4
    body, entries, pos = b"", [], 64
    for k in range(0, len(ids), frame):
        chunk = ids[k:k + frame]
        raw = struct.pack(f"<{len(chunk)}{'H' if width == 2 else 'I'}", *chunk)
        comp = zstd(["-19"], raw)
        crc = crc32c(raw)
        entries.append(struct.pack("<QQIIII", pos, k, len(chunk), len(comp), chunk.count(eos), crc))
        body += struct.pack("<4sIII", b"DSFR", len(chunk), len(comp), crc) + comp
        pos += 16 + len(comp)
    counts = (0, 0, 0) if streamed else (len(ids), ids.count(eos), len(entries))
    head = b"DSTOKENS" + struct.pack("<6I3Q", 1, 1 if streamed else 0, width, vocab, eos, frame, *counts) + b"\0" * 4
    head += struct.pack("<I", crc32c(head))
    index = b"DSIX" + b"\0" * 4 + struct.pack("<Q", len(entries)) + b"".join(entries)
    trailer = b"DSTOKEND" + struct.pack("<4QI", len(ids), ids.count(eos), len(entries), pos, crc32c(index)) + b"\0" * 16
    trailer += struct.pack("<I", crc32c(trailer))
    open(out, "wb").write(head + body + index + trailer)
