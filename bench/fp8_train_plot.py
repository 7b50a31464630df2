#!/usr/bin/env python3
"""Compare an FP8 training run with its fp32 twin (same config, data, seed) from ds-pretrain --metrics files:
prints the relative loss difference over windows of steps and at each validation, and draws both curves
plus the relative difference as an SVG (no plotting library needed).
usage: $DS_PY bench/fp8_train_plot.py FP32.jsonl FP8.jsonl OUT.svg [--window 25]
"""
import argparse
import json


def load(path):
    train, val = {}, {}
    for line in open(path):
        r = json.loads(line)
        if "step" not in r:
            continue
        if "val_loss" in r:
            val[r["step"]] = r["val_loss"]
        if "loss" in r:
            train[r["step"]] = r["loss"]
    return train, val


def smooth(xs, w):
    out, acc = [], []
    for x in xs:
        acc.append(x)
        if len(acc) > w:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def polyline(pts, color, width=1.5, dash=None):
    d = "M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in pts)
    extra = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<path fill="none" stroke="{color}" stroke-width="{width}" stroke-linejoin="round"{extra} d="{d}"/>'


def panel(x0, y0, w, h, series, steps, ylabel, yfmt, title, zero=False):
    ys = [y for s in series for y in s[0]]
    lo, hi = min(ys), max(ys)
    if zero:
        m = max(abs(lo), abs(hi), 1e-9)
        lo, hi = -m, m
    pad = (hi - lo) * 0.05 or 1
    lo, hi = lo - pad, hi + pad
    sx = lambda s: x0 + (s - steps[0]) / max(1, steps[-1] - steps[0]) * w
    sy = lambda v: y0 + h - (v - lo) / (hi - lo) * h
    out = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>',
           f'<text x="{x0 + w / 2}" y="{y0 - 8}" text-anchor="middle" font-size="14">{title}</text>',
           f'<text x="{x0 - 50}" y="{y0 + h / 2}" font-size="12" transform="rotate(-90 {x0 - 50} {y0 + h / 2})" '
           f'text-anchor="middle">{ylabel}</text>']
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        out.append(f'<text x="{x0 - 5}" y="{sy(v) + 4:.1f}" font-size="10" text-anchor="end">{yfmt(v)}</text>')
        out.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#eee"/>')
    for k in range(6):
        s = steps[0] + (steps[-1] - steps[0]) * k / 5
        out.append(f'<text x="{sx(s):.1f}" y="{y0 + h + 14}" font-size="10" text-anchor="middle">{s:.0f}</text>')
    if zero:
        out.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{sy(0):.1f}" y2="{sy(0):.1f}" stroke="#666"/>')
    for ys_, color, label, i in series:
        # the first series drawn wide underneath, so identical curves stay visible
        out.append(polyline([(sx(s), sy(v)) for s, v in zip(steps, ys_)], color, 3.5 if i == 0 and len(series) > 1 else 1.2))
        out.append(f'<text x="{x0 + w - 150}" y="{y0 + 18 + 16 * i}" font-size="12" fill="{color}">{label}</text>')
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("fp32")
    ap.add_argument("fp8")
    ap.add_argument("out")
    ap.add_argument("--window", type=int, default=25)
    a = ap.parse_args()
    t32, v32 = load(a.fp32)
    t8, v8 = load(a.fp8)
    steps = sorted(set(t32) & set(t8))
    l32 = [t32[s] for s in steps]
    l8 = [t8[s] for s in steps]
    rel = [(b - c) / c for b, c in zip(l8, l32)]
    s32, s8 = smooth(l32, a.window), smooth(l8, a.window)
    srel = [(b - c) / c for b, c in zip(s8, s32)]
    print(f"{len(steps)} common steps; relative difference (fp8 - fp32) / fp32 of the training loss:")
    for k in range(0, len(steps), a.window):
        seg = slice(k, k + a.window)
        m32, m8 = sum(l32[seg]) / len(l32[seg]), sum(l8[seg]) / len(l8[seg])
        print(f"  steps {steps[k]:4d}-{steps[min(k + a.window, len(steps)) - 1]:4d}: fp32 {m32:.4f} fp8 {m8:.4f} "
              f"rel {100 * (m8 - m32) / m32:+.3f}%")
    for s in sorted(set(v32) & set(v8)):
        print(f"  validation at step {s}: fp32 {v32[s]:.4f} fp8 {v8[s]:.4f} rel {100 * (v8[s] - v32[s]) / v32[s]:+.3f}%")
    print(f"  per-step |rel| max {100 * max(abs(r) for r in rel):.3f}%, mean {100 * sum(abs(r) for r in rel) / len(rel):.3f}%")
    W, H = 760, 560
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">',
           f'<rect width="{W}" height="{H}" fill="white"/>']
    svg += panel(80, 40, 640, 280, [(l32, "#8fc0ea", "fp32 (wide, underneath)", 0), (l8, "#d62728", "FP8 (E4M3, V3 tiling)", 1)], steps,
                 "training loss", lambda v: f"{v:.2f}", "demo config: training loss, fp32 vs FP8 Linear GEMMs")
    svg += panel(80, 380, 640, 140, [(srel, "#2ca02c", f"rel. diff ({a.window}-step means)", 0)], steps,
                 "(fp8-fp32)/fp32", lambda v: f"{100 * v:+.2f}%", "relative loss difference", zero=True)
    svg.append(f'<text x="{80 + 320}" y="{H - 8}" text-anchor="middle" font-size="12">step</text>')
    svg.append("</svg>")
    open(a.out, "w").write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
