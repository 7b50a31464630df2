"""Tokenizer benchmark: ds-tokenize against HF tokenizers and tiktoken, side by side, same vocabulary.

  DS_PY bench/tokenize_bench.py [--mb 32] [--vocab 32000] [--bin bin] [--work DIR]

Corpus: real English text found on every Debian machine (/usr/share/common-licenses, every
/usr/share/doc/*/copyright, man pages via gzip), deduplicated by file, cut into documents of about 8 KB
at line ends. Encoding: the same documents for all three; ours reads them as JSONL (--jsonl text, so
its time includes reading, JSON parsing and writing ids), the Python libraries get a list of str.
  1 thread:   ds-tokenize --threads 1 | HF Tokenizer.encode per document | tiktoken encode_ordinary
  all cores:  ds-tokenize --threads 0 | HF encode_batch_fast (or encode_batch) | tiktoken
              encode_ordinary_batch(num_threads=nproc)
Two tokenizers: DeepSeek-style (trained by ds-tokenize; tiktoken gets the three Split patterns joined
into one alternation, which fancy-regex accepts, so its token count differs slightly) and GPT-2-style
(trained by HF's BpeTrainer with ByteLevel use_regex true; tiktoken gets exactly GPT-2's pattern).
tiktoken's mergeable_ranks are our vocabulary's byte strings ranked by id, which for a trained BPE is
merge order. Training: ds-tokenize train against HF BpeTrainer (same documents, vocabulary, specials).
Prints MB/s per engine and the ratios ours/theirs; the token counts show the engines agree.
"""
import argparse
import glob
import gzip
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "ref"))
from tokenizer_ref import DS_PATTERNS, DS_SPECIALS  # noqa: E402


def collect_text(limit):
    seen, parts, total = set(), [], 0
    files = sorted(glob.glob("/usr/share/common-licenses/*")) + sorted(glob.glob("/usr/share/doc/*/copyright"))
    for p in files + sorted(glob.glob("/usr/share/man/man1/*.gz")):
        try:
            b = gzip.open(p).read() if p.endswith(".gz") else open(p, "rb").read()
            s = b.decode("utf-8")
        except (OSError, UnicodeDecodeError, EOFError):
            continue
        h = hashlib.sha1(b).digest()
        if h in seen:
            continue
        seen.add(h)
        parts.append(s)
        total += len(b)
        if total >= limit:
            break
    return "".join(parts)


def documents(text, size=8192):
    docs, cur, n = [], [], 0
    for line in text.splitlines(keepends=True):
        cur.append(line)
        n += len(line)
        if n >= size:
            docs.append("".join(cur))
            cur, n = [], 0
    if cur:
        docs.append("".join(cur))
    return docs


def timed(fn, repeat=1):
    best = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        best = dt if best is None or dt < best else best
    return best, out


def cpu_self():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_ours(binary, args, stdin_path=None):
    t = time.perf_counter()
    p = subprocess.run([binary] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=open(stdin_path, "rb") if stdin_path else None, check=True)
    return time.perf_counter() - t, p.stdout, p.stderr.decode()


def tiktoken_from(tokjson, pattern):
    import tiktoken
    j = json.load(open(tokjson, encoding="utf-8"))
    from tokenizers import pre_tokenizers  # noqa: F401
    cp2byte = {}
    n = 0
    for b in range(256):
        if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255:
            cp2byte[chr(b)] = b
    for b in range(256):
        if b not in cp2byte.values():
            cp2byte[chr(256 + n)] = b
            n += 1
    ranks = {}
    specials = {a["content"] for a in j["added_tokens"]}
    for tok, i in j["model"]["vocab"].items():
        if tok in specials:
            continue
        ranks[bytes(cp2byte[c] for c in tok)] = i
    return tiktoken.Encoding(name="bench", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})


def bench_encode(label, tokjson, tt_pattern, docs, jsonl, binary, nproc, results):
    from tokenizers import Tokenizer
    total_mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    hf = Tokenizer.from_file(tokjson)
    hf.encode_special_tokens = True
    tt = tiktoken_from(tokjson, tt_pattern)
    row = {"tokenizer": label, "mb": total_mb}
    for threads in (1, nproc):
        c0 = cpu_children()
        dt, out, err = run_ours(binary, ["encode", "-t", tokjson, "--ids", "--jsonl", "text", "--threads", str(threads), jsonl])
        m = re.search(r"([0-9.]+) MB/s", err)
        ours_tokens = sum(len(line.split()) for line in out.decode().splitlines())
        row["ours_%d" % threads] = float(m.group(1))
        row["ours_wall_%d" % threads] = total_mb / dt
        if threads == 1:
            # CPU seconds too: on a shared machine they say more than wall time (single thread only)
            row["ours_cpu_mbps"] = total_mb / (cpu_children() - c0)
            c0 = cpu_self()
            t_hf, enc = timed(lambda: [hf.encode(d, add_special_tokens=False).ids for d in docs])
            row["hf_cpu_mbps"] = total_mb / (cpu_self() - c0)
            c0 = cpu_self()
            t_tt, enc_tt = timed(lambda: [tt.encode_ordinary(d) for d in docs])
            row["tt_cpu_mbps"] = total_mb / (cpu_self() - c0)
            print("  %-9s  1 thread, per CPU second (process start and load included for ours): ours %.1f MB | "
                  "HF %.1f | tiktoken %.1f" % (label, row["ours_cpu_mbps"], row["hf_cpu_mbps"], row["tt_cpu_mbps"]))
        else:
            fast = getattr(hf, "encode_batch_fast", None) or hf.encode_batch
            t_hf, enc = timed(lambda: [e.ids for e in fast(docs, add_special_tokens=False)])
            t_tt, enc_tt = timed(lambda: tt.encode_ordinary_batch(docs, num_threads=threads))
        row["hf_%d" % threads] = total_mb / t_hf
        row["tt_%d" % threads] = total_mb / t_tt
        row["tokens_ours"] = ours_tokens
        row["tokens_hf"] = sum(len(e) for e in enc)
        row["tokens_tt"] = sum(len(e) for e in enc_tt)
        print("  %-9s %2d thread(s): ours %7.1f MB/s (wall incl. start+load %6.1f) | HF %6.1f | tiktoken %6.1f | "
              "ours/HF %.2fx, ours/tiktoken %.2fx" % (label, threads, row["ours_%d" % threads], row["ours_wall_%d" % threads],
                                                      row["hf_%d" % threads], row["tt_%d" % threads],
                                                      row["ours_%d" % threads] / row["hf_%d" % threads],
                                                      row["ours_%d" % threads] / row["tt_%d" % threads]), flush=True)
    print("  %-9s tokens: ours %d, HF %d, tiktoken %d" % (label, row["tokens_ours"], row["tokens_hf"], row["tokens_tt"]))
    results.append(row)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=32)
    ap.add_argument("--train-mb", type=float, default=16)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "bin"))
    ap.add_argument("--work", default="/tmp/ds-tokenize-bench")
    a = ap.parse_args()
    binary = os.path.join(a.bin, "ds-tokenize")
    nproc = os.cpu_count()
    os.makedirs(a.work, exist_ok=True)
    text = collect_text(int(a.mb * 1e6))
    docs = documents(text)
    jsonl = os.path.join(a.work, "docs.jsonl")
    with open(jsonl, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    # training documents: the first train-mb of the corpus, one file each
    tdir = os.path.join(a.work, "train")
    os.makedirs(tdir, exist_ok=True)
    for old in glob.glob(tdir + "/*.txt"):
        os.remove(old)
    tdocs, n = [], 0
    for d in docs:
        if n >= a.train_mb * 1e6:
            break
        tdocs.append(d)
        n += len(d.encode("utf-8"))
    # group into 64 files so the command line stays short; each file is one document for both trainers
    groups = [tdocs[i::64] for i in range(64)]
    paths, gtexts = [], []
    for i, g in enumerate(groups):
        p = os.path.join(tdir, "t%02d.txt" % i)
        s = "".join(g)
        open(p, "w", encoding="utf-8", newline="").write(s)
        paths.append(p)
        gtexts.append(s)
    print("corpus: %.1f MB in %d documents; training on %.1f MB; vocabulary %d; %d cores" %
          (len(text.encode("utf-8")) / 1e6, len(docs), n / 1e6, a.vocab, nproc))

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers, Regex
    ours_json = os.path.join(a.work, "ours.json")
    t_ours, _, _ = run_ours(binary, ["train", "-q", "--vocab-size", str(a.vocab), "-o", ours_json] + paths)

    def hf_train(style):
        tok = Tokenizer(models.BPE())
        if style == "deepseek":
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in DS_PATTERNS]
                + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        tr = trainers.BpeTrainer(vocab_size=a.vocab, special_tokens=DS_SPECIALS if style == "deepseek" else ["<|endoftext|>"],
                                 show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(gtexts, trainer=tr)
        return tok

    t_hf, hf_tok = timed(lambda: hf_train("deepseek"))
    hf_json = os.path.join(a.work, "hf.json")
    hf_tok.save(hf_json)
    same = json.load(open(ours_json))["model"]["merges"] == [list(m) if not isinstance(m, str) else m.split(" ")
                                                             for m in json.load(open(hf_json))["model"]["merges"]]
    print("training (%d threads): ours %.2f s, HF BpeTrainer %.2f s, ratio HF/ours %.2fx; merges identical: %s" %
          (nproc, t_ours, t_hf, t_hf / t_ours, same), flush=True)
    gpt2_json = os.path.join(a.work, "gpt2.json")
    hf_train("gpt2").save(gpt2_json)

    results = []
    joined = "|".join(DS_PATTERNS)
    bench_encode("deepseek", ours_json, joined, docs, jsonl, binary, nproc, results)
    gpt2_pat = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    bench_encode("gpt2", gpt2_json, gpt2_pat, docs, jsonl, binary, nproc, results)
    json.dump({"train": {"ours_s": t_ours, "hf_s": t_hf, "merges_identical": same}, "encode": results},
              open(os.path.join(a.work, "results.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
