"""Decode a PNG with Python's zlib and struct (an implementation independent of ours) and check it.

usage: png_check.py pattern FILE      every pixel equals the pattern tests/unit/test_plot.c draws
       png_check.py chart FILE W H RGB [antialiased]
                                      the image is W x H and contains pixels of colour RGB (hex)
                                      [and more than 16 grey levels: text in a font file]
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
    px, prev = [], bytearray(3 * w)
    for y in range(h):
        row = unfilter(raw[y * stride], bytearray(raw[y * stride + 1:(y + 1) * stride]), prev, y)
        px.append([(row[3 * x] << 16) | (row[3 * x + 1] << 8) | row[3 * x + 2] for x in range(w)])
        prev = row
    return w, h, px


def unfilter(kind, cur, prev, y):
    """Undo one scanline's filter (PNG spec, section 9: None, Sub, Up, Average, Paeth; 3 bytes per pixel)."""
    assert kind <= 4, f"row {y}: filter type {kind}"
    for i in range(len(cur)):
        a = cur[i - 3] if i >= 3 else 0
        b = prev[i]
        c = prev[i - 3] if i >= 3 else 0
        if kind == 1:
            cur[i] = (cur[i] + a) & 255
        elif kind == 2:
            cur[i] = (cur[i] + b) & 255
        elif kind == 3:
            cur[i] = (cur[i] + (a + b) // 2) & 255
        elif kind == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    return cur


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
    # text drawn anti-aliased in a font file blends the ink into the background: many grey levels
    greys = {v & 255 for row in px for v in row if v >> 16 == (v >> 8) & 255 == v & 255}
    print(f"{w}x{h}, {n} pixels of {rgb:06x}, {len(greys)} grey levels")
    ok = (w, h) == (want_w, want_h) and n > 100
    if len(sys.argv) > 6 and sys.argv[6] == "antialiased":
        ok = ok and len(greys) > 16
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
