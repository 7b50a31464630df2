"""Decode a PNG with Python's zlib and struct (an implementation independent of ours) and check it.

usage: png_check.py pattern FILE      every pixel equals the pattern tests/unit/test_plot.c draws
       png_check.py chart FILE W H RGB the image is W x H and contains pixels of colour RGB (hex)
Prints what it found; exits non-zero on any mismatch.
"""
import struct
import sys
import zlib


def decode(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "bad signature"
    pos, idat, ihdr, seen = 8, b"", None, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        typ, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(typ + body) == crc, f"bad CRC in {typ!r}"
        seen.append(typ)
        if typ == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif typ == b"IDAT":
            idat += body
        pos += 12 + n
    assert seen[0] == b"IHDR" and seen[-1] == b"IEND", f"chunk order {seen}"
    w, h, depth, ctype, comp, filt, inter = ihdr
    assert (depth, ctype, comp, filt, inter) == (8, 2, 0, 0, 0), f"IHDR {ihdr}"
    raw = zlib.decompress(idat)  # checks the Adler-32 trailer too
    stride = 1 + 3 * w
    assert len(raw) == h * stride, f"{len(raw)} bytes for {w}x{h}"
    px = []
    for y in range(h):
        row = raw[y * stride:(y + 1) * stride]
        assert row[0] == 0, f"row {y}: filter {row[0]}"
        px.append([(row[1 + 3 * x] << 16) | (row[2 + 3 * x] << 8) | row[3 + 3 * x] for x in range(w)])
    return w, h, px


def pattern(x, y):
    return (((x * 7 + y) & 255) << 16) | (((y * 5) & 255) << 8) | ((x ^ y) & 255)


def main():
    kind, path = sys.argv[1], sys.argv[2]
    w, h, px = decode(path)
    if kind == "pattern":
        bad = sum(px[y][x] != pattern(x, y) for y in range(h) for x in range(w))
        print(f"{w}x{h}, {bad} pixels differ")
        sys.exit(1 if bad else 0)
    want_w, want_h, rgb = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5], 16)
    n = sum(v == rgb for row in px for v in row)
    print(f"{w}x{h}, {n} pixels of {rgb:06x}")
    sys.exit(0 if (w, h) == (want_w, want_h) and n > 100 else 1)


if __name__ == "__main__":
    main()
