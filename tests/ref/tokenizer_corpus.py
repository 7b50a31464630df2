"""Deterministic, varied test corpus for tokenizer reference checks.

Real text from the Debian machine (licenses, copyright files, man pages, C headers, Python sources) plus
generated Unicode-rich documents: letters with combining marks, CJK and kana, emoji with ZWJ sequences
and modifiers, digit runs, whitespace runs (tabs, CR LF, NBSP, U+0085, U+2028, ideographic space),
control characters, and special-token look-alikes. Usage: tokenizer_corpus.py OUTDIR [NDOCS] [SEED]
writes OUTDIR/doc-NNNN.txt (one document per file, UTF-8).
"""
import glob
import gzip
import os
import random
import sys


def real_texts(rng, limit_bytes):
    paths = sorted(glob.glob("/usr/share/common-licenses/*"))
    paths += sorted(glob.glob("/usr/share/doc/*/copyright"))[:200]
    paths += sorted(glob.glob("/usr/include/*.h"))[:60]
    venv = os.path.expanduser("~/.cache/ds-venv/lib/python3.11/site-packages/tokenizers")
    paths += sorted(glob.glob(venv + "/**/*.py", recursive=True))[:20]
    rng.shuffle(paths)
    out, total = [], 0
    for p in paths:
        try:
            b = open(p, "rb").read()
        except OSError:
            continue
        try:
            s = b.decode("utf-8")
        except UnicodeDecodeError:
            continue
        out.append(s[:20000])
        total += len(out[-1])
        if total > limit_bytes:
            break
    for p in sorted(glob.glob("/usr/share/man/man1/*.gz"))[:40]:
        try:
            out.append(gzip.open(p).read().decode("utf-8")[:8000])
        except (OSError, UnicodeDecodeError):
            pass
    return out


WORDS_LATIN = ["naïve", "café", "Straße", "façade", "résumé", "Ærøskøbing", "ĳssel", "Œuvre", "ǅemal", "İstanbul"]
CJK = ["東京都", "日本語のテキスト", "中文字符测试", "한국어 문장", "カタカナ", "ひらがな", "漢字仮名交じり文", "龥龦", "〆ヿ"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇯🇵", "🤖", "✨", "🧑🏿‍💻"]
MARKS = ["e\u0301", "a\u0308\u0304", "\u0915\u094d\u0937", "\u0e01\u0e34", "\u05e9\u05c1\u05b8", "\u0644\u064e"]
SCRIPTS = ["Ελληνικά κείμενα", "Русский текст", "עברית", "العربية", "हिन्दी", "ไทย", "ქართული", "Հայերեն"]
SPACES = [" ", "  ", "\t", "\t\t ", "\n", "\n\n", "\r\n", "\u00a0", "\u3000", "\u2028", "\u0085", "\u2003", " \n \n"]
PUNCT = ["...", "!?", "—", "«»", "“quoted”", "(x)", "[1]", "{a: b}", "#!", "@user", "$100", "50%", "a+b=c", "::", "->"]
CONTROL = ["\x00", "\x01", "\x07", "\x1b[0m", "\x7f", "\x0b", "\x0c"]
SPECIAL_LOOKALIKE = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<think>", "</think>",
                     "<|endoftext|>", "<｜fim▁hole｜>"]


def generated_doc(rng):
    parts = []
    for _ in range(rng.randint(20, 200)):
        k = rng.random()
        if k < 0.2:
            parts.append(rng.choice(WORDS_LATIN))
        elif k < 0.3:
            parts.append(rng.choice(CJK))
        elif k < 0.38:
            parts.append(rng.choice(EMOJI))
        elif k < 0.45:
            parts.append(rng.choice(MARKS))
        elif k < 0.53:
            parts.append(rng.choice(SCRIPTS))
        elif k < 0.63:
            parts.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 14))))
        elif k < 0.66:
            parts.append(rng.choice(["١٢٣", "½", "Ⅻ", "²³", "৩৪৫", "１２３"]))
        elif k < 0.78:
            parts.append(rng.choice(SPACES) * rng.randint(1, 5))
        elif k < 0.88:
            parts.append(rng.choice(PUNCT))
        elif k < 0.93:
            parts.append(rng.choice(CONTROL))
        elif k < 0.97:
            parts.append(rng.choice(SPECIAL_LOOKALIKE))
        else:
            parts.append("".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(rng.randint(1, 6))))
        parts.append(rng.choice(["", " ", " ", "\n"]))
    return "".join(parts)


def corpus(ndocs=60, seed=1234, real_bytes=600_000):
    rng = random.Random(seed)
    docs = real_texts(rng, real_bytes)
    # strip surrogate-free check: every doc must be encodable as UTF-8
    docs = [d for d in docs if d]
    docs += [generated_doc(rng) for _ in range(ndocs)]
    # long runs that stress the merge (whitespace, digits, one repeated letter)
    docs.append(" " * 5000 + "x" + "\t" * 300 + "\n" * 200)
    docs.append("9" * 4001 + "a" * 3000)
    docs.append("ab" * 2000)
    return docs


def write(outdir, docs):
    os.makedirs(outdir, exist_ok=True)
    paths = []
    for i, d in enumerate(docs):
        p = os.path.join(outdir, "doc-%04d.txt" % i)
        with open(p, "w", encoding="utf-8", newline="") as f:
            f.write(d)
        paths.append(p)
    return paths


if __name__ == "__main__":
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1234
    for p in write(sys.argv[1], corpus(n, seed)):
        print(p)
