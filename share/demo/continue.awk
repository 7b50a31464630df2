#!/usr/bin/awk -f
# Prose as chat: "continue this text" conversations cut from the training prose, mixed into the SFT data
# so that fine-tuning on arithmetic does not make the model forget the language it was pretrained on.
# Usage: LC_ALL=C awk -f json.awk -f continue.awk -v n=N -v seed=S FILE...   (bytes: the same under every awk)
#   Paragraphs (blank-line separated, whitespace collapsed) of at least 120 bytes of ASCII prose give one
#   conversation each: the user asks to continue the paragraph's first ~40% (at most 60 bytes, cut at a
#   space), the assistant continues with the next 110 bytes at most (cut at a space): short enough for
#   the demo's rows of 128 tokens. n conversations are chosen with a Park-Miller generator (seeded: the
#   same everywhere); fewer if the prose has fewer such paragraphs.
function next_rand() { state = (state * 48271) % 2147483647; return state }
# Paragraphs of prose: ASCII (no UTF-8 to cut or check) and mostly lower-case words (code, tables and
# capitals tokenize into too many tokens for a row)
function flush(   p, t) {
    p = para; para = ""; t = p
    if (length(p) >= 120 && p !~ /[\200-\377]/ && gsub(/[a-z ,.]/, "", t) >= 0.85 * length(p)) paras[np++] = p
}
BEGIN { state = (seed == "" ? 1 : seed) % 2147483646 + 1; for (i = 0; i < 10; i++) next_rand() }
/^[[:space:]]*$/ { flush(); next }
{ gsub(/[[:space:]]+/, " "); sub(/^ /, ""); sub(/ $/, ""); para = para (para == "" ? "" : " ") $0 }
END {
    flush()
    if (np == 0) exit
    for (k = 0; k < n && k < np; k++) {
        j = k + next_rand() % (np - k); t = paras[k]; paras[k] = paras[j]; paras[j] = t   # partial shuffle
        p = paras[k]
        cut = int(length(p) * 0.4); if (cut > 60) cut = 60
        while (cut > 20 && substr(p, cut, 1) != " ") cut--
        if (substr(p, cut, 1) != " ") continue   # no word boundary early enough (a long URL): left out
        head = substr(p, 1, cut - 1); rest = substr(p, cut + 1)
        if (length(rest) > 110) { rest = substr(rest, 1, 110); sub(/ [^ ]*$/, "", rest) }
        printf "{\"messages\":[{\"role\":\"user\",\"content\":\"Continue: %s\"},{\"role\":\"assistant\",\"content\":\"%s\"}]}\n", json(head), json(rest)
    }
}
