#!/usr/bin/awk -f
# Passkey documents as JSON lines {"text": ...}, for training on the passkey task through the tools
# (ds-tokenize encode --jsonl text --bos, then ds-pretrain / ds-extend-ctx). The wording comes from a passkey
# text file (share/passkey/tiny.json) as -v variables; a document is intro, filler cut to length,
# the needle holding a random key at a random depth, more filler, the question and the answer, as
# lib/infer/passkey.c builds its examples. Written for a byte-level tokenizer (no merges: one token per
# byte), so lengths are exact: documents are grouped into rows of exactly T tokens counting BOS and EOS
# (ds-tokenize's), and packing windows of T tokens (lib/train/packed.h) then start at a row's BOS. A row
# holds one passkey document of a length uniform in [shortest, T] from position 0, as the evaluation
# puts its examples, and a filler-only document in the rest (one needle per row: no other key to
# confuse the answer with; the benchmark pads such rows in a separate segment).
# Usage: awk -f share/demo/json.awk -f docs.awk -v rows=N -v T=T [-v shortest=L] -v seed=S -v intro=... -v filler=... \
#            -v needle=... -v question=... -v answer=... -v digits=D
# shortest: the shortest passkey document (default: the shortest the wording allows; T: every one
# fills its row).
# (needle and answer contain {key}; "\n" in the pieces must reach awk as a backslash escape, which -v
# decodes.) A Park-Miller generator (not awk's rand) makes the output identical under every awk.
function next_rand() { state = (state * 48271) % 2147483647; return state }
function below(k) { return next_rand() % k }
function uniform() { return next_rand() / 2147483647 }
function fill(n, lead,   s, i) { # n filler characters starting `lead` characters into the filler cycle
    s = ""
    for (i = 0; i < n; i++) s = s substr(filler, (lead + i) % u + 1, 1)
    return s
}
function doc(len,   key, i, nd, na, F, before, lead, d, b) { # a document of len - 2 characters
    key = (1 + below(9)) ""
    for (i = 1; i < digits; i++) key = key below(10)
    nd = needle; gsub(/\{key\}/, key, nd)
    na = answer; gsub(/\{key\}/, key, na)
    F = len - 2 - length(intro) - length(nd) - length(question) - length(na)
    d = uniform(); d = d < 0.1 ? 0 : d < 0.2 ? 1 : uniform()
    before = int(d * F + 0.5)
    lead = (u - F % u) % u
    if (F >= 4 * u) { # on a filler boundary, as the evaluation puts it
        b = int((before + lead) / u + 0.5) * u - lead
        before = b < 0 ? 0 : b > F ? F : b
    }
    prompt = intro fill(before, lead) nd fill(F - before, lead + before) question
    return prompt na
}
BEGIN {
    state = (seed == "" ? 1 : seed) % 2147483646 + 1
    for (i = 0; i < 10; i++) next_rand()
    u = length(filler)
    nk = needle; keys = gsub(/\{key\}/, "", nk); na = answer; keys += gsub(/\{key\}/, "", na)
    min = 2 + length(intro) + length(nk) + length(na) + keys * digits + length(question) + 1
    if (T < min) { print "docs.awk: T = " T " cannot hold a document (" min " tokens at least)" > "/dev/stderr"; exit 2 }
    lo = shortest > min ? shortest : min
    for (r = 0; r < rows; r++) {
        len = lo + below(T - lo + 1)
        if (T - len < 3) len = T
        text = doc(len)
        if (chat) { # as a conversation for ds-sft: the prompt from the user, the answer from the assistant
            na = substr(text, length(prompt) + 1)
            print "{\"messages\": [{\"role\": \"user\", \"content\": \"" json(prompt) "\"}, {\"role\": \"assistant\", \"content\": \"" json(na) "\"}]}"
            continue
        }
        print "{\"text\": \"" json(text) "\"}"
        if (len < T) print "{\"text\": \"" json(fill(T - len - 2, below(u))) "\"}"
    }
}
