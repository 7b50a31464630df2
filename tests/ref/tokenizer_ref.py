"""Reference side of the tokenizer checks: HF tokenizers trains, encodes and decodes the same text.

  tokenizer_ref.py corpus OUTDIR [NDOCS] [SEED]        write the varied test corpus (one file per document)
  tokenizer_ref.py train OUT.json VOCAB STYLE DOCS...  HF BpeTrainer; STYLE: deepseek (our pre-tokenizer and
                                                       specials) or gpt2 (ByteLevel with use_regex true)
  tokenizer_ref.py encode TOK.json IDS [--special] DOCS...
                                                       compare our id lines (one per document) with HF's
                                                       encode (special tokens split only with --special)
  tokenizer_ref.py merges OURS.json HF.json            compare vocabularies and merge lists
  tokenizer_ref.py decode TOK.json IDS DOCS...         HF decodes our ids back to each document
  tokenizer_ref.py transformers TOK.json IDS DOCS...   transformers' PreTrainedTokenizerFast (its
                                                       post-processor adds BOS) against our --bos ids
Exit status 0 when everything agrees; mismatches are printed.
"""
import json
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers, Regex

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import tokenizer_corpus  # noqa: E402

DS_PATTERNS = [
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
]
DS_SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<｜fim▁begin｜>", "<｜fim▁hole｜>",
               "<｜fim▁end｜>", "<｜User｜>", "<｜Assistant｜>", "<｜System｜>", "<think>", "</think>"]


def read_docs(paths):
    return [open(p, encoding="utf-8", newline="").read() for p in paths]


def read_ids(path):
    with open(path) as f:
        return [[int(x) for x in line.split()] for line in f.read().split("\n")[:-1]]


def cmd_train(out, vocab, style, paths):
    tok = Tokenizer(models.BPE())
    if style == "deepseek":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in DS_PATTERNS]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        specials = DS_SPECIALS
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        specials = ["<|endoftext|>"]
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=int(vocab), special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(read_docs(paths), trainer=trainer)
    tok.save(out)
    return 0


def cmd_encode(tokfile, idsfile, paths, special):
    tok = Tokenizer.from_file(tokfile)
    tok.encode_special_tokens = not special
    docs = read_docs(paths)
    ours = read_ids(idsfile)
    if len(ours) != len(docs):
        print("document count differs: ours %d, HF %d" % (len(ours), len(docs)))
        return 1
    bad_docs = bad_tokens = total = 0
    for i, (d, o) in enumerate(zip(docs, ours)):
        ref = tok.encode(d, add_special_tokens=False).ids
        total += len(ref)
        if ref != o:
            bad_docs += 1
            k = next((j for j in range(min(len(ref), len(o))) if ref[j] != o[j]), min(len(ref), len(o)))
            bad_tokens += sum(1 for a, b in zip(ref, o) if a != b) + abs(len(ref) - len(o))
            if bad_docs <= 5:
                toks = tok.encode(d, add_special_tokens=False).tokens
                print("doc %d (%s): first difference at token %d: HF %s %r, ours %s" %
                      (i, paths[i], k, ref[k:k + 4], toks[k:k + 4], o[k:k + 4]))
    print("%d documents, %d tokens, %d documents differ, %d tokens differ" % (len(docs), total, bad_docs, bad_tokens))
    return 1 if bad_docs else 0


def cmd_decode(tokfile, idsfile, paths):
    tok = Tokenizer.from_file(tokfile)
    docs = read_docs(paths)
    bad = 0
    for i, (d, o) in enumerate(zip(docs, read_ids(idsfile))):
        if tok.decode(o, skip_special_tokens=False) != d:
            bad += 1
            print("doc %d: HF decodes our ids to different text" % i)
    print("%d documents, %d decode differently" % (len(docs), bad))
    return 1 if bad else 0


def cmd_transformers(tokfile, idsfile, paths):
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_file=tokfile, split_special_tokens=True)
    bad = 0
    docs = read_docs(paths)
    for i, (d, o) in enumerate(zip(docs, read_ids(idsfile))):
        if tok(d, add_special_tokens=True)["input_ids"] != o:
            bad += 1
            print("doc %d: transformers encodes differently" % i)
    print("%d documents, %d differ" % (len(docs), bad))
    return 1 if bad else 0


def load_model(path):
    j = json.load(open(path, encoding="utf-8"))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in j["model"]["merges"]]
    return j["model"]["vocab"], merges, j


def cmd_merges(ours_path, hf_path):
    v1, m1, j1 = load_model(ours_path)
    v2, m2, j2 = load_model(hf_path)
    rc = 0
    n = min(len(m1), len(m2))
    first = next((i for i in range(n) if m1[i] != m2[i]), None)
    if first is None and len(m1) == len(m2):
        print("merges identical: %d" % len(m1))
    else:
        rc = 1
        print("merges differ: ours %d, HF %d, first difference at %s" % (len(m1), len(m2), first))
        if first is not None:
            print("  ours %r, HF %r" % (m1[first], m2[first]))
    if v1 != v2:
        rc = 1
        diff = [k for k in set(v1) | set(v2) if v1.get(k) != v2.get(k)]
        print("vocabularies differ in %d entries, e.g. %r" % (len(diff), [(k, v1.get(k), v2.get(k)) for k in diff[:3]]))
    else:
        print("vocabularies identical: %d" % len(v1))
    a1 = [(a["id"], a["content"], a["special"]) for a in j1["added_tokens"]]
    a2 = [(a["id"], a["content"], a["special"]) for a in j2["added_tokens"]]
    if a1 != a2:
        rc = 1
        print("added tokens differ")
    return rc


def main(argv):
    cmd = argv[1]
    if cmd == "corpus":
        n = int(argv[3]) if len(argv) > 3 else 60
        seed = int(argv[4]) if len(argv) > 4 else 1234
        tokenizer_corpus.write(argv[2], tokenizer_corpus.corpus(n, seed))
        return 0
    if cmd == "train":
        return cmd_train(argv[2], argv[3], argv[4], argv[5:])
    if cmd == "encode":
        special = "--special" in argv
        args = [a for a in argv[2:] if a != "--special"]
        return cmd_encode(args[0], args[1], args[2:], special)
    if cmd == "decode":
        return cmd_decode(argv[2], argv[3], argv[4:])
    if cmd == "transformers":
        return cmd_transformers(argv[2], argv[3], argv[4:])
    if cmd == "merges":
        return cmd_merges(argv[2], argv[3])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
