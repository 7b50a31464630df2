# json(s): s as the body of a JSON string, for the awk scripts that write JSON lines (share/demo/continue.awk,
# share/passkey/docs.awk; load it first: awk -f json.awk -f SCRIPT). Backslashes, quotes, newlines and tabs
# are escaped by splitting and joining, because what a backslash means in a gsub replacement differs
# between awks (mawk leaves "\\\\" a single backslash); other control characters become spaces.
function json_join(s, sep, rep,    parts, n, i, out) {
    n = split(s, parts, sep); out = parts[1]
    for (i = 2; i <= n; i++) out = out rep parts[i]
    return out
}
function json(s) {
    s = json_join(json_join(s, "\\", "\\\\"), "\"", "\\\"")
    s = json_join(json_join(s, "\n", "\\n"), "\t", "\\t")
    gsub(/[\001-\037]/, " ", s)
    return s
}
