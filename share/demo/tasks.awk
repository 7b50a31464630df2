#!/usr/bin/awk -f
# Arithmetic tasks with checkable answers, as chat JSONL (SFT) and prompt JSONL (RL, evaluation).
# Usage: awk -f tasks.awk -v kind=sft|prompts -v n=N -v seed=S [-v set=train|heldout] [-v by=pair|prompt]
#            [-v min=M] [-v max=M]
#            [-v ops=+-] [-v words=W] [-v steps=1] [-v noise=F]
#   kind=sft      {"messages":[{"role":"user",...},{"role":"assistant",...}]}
#   kind=prompts  {"messages":[{"role":"user",...}],"answer":"42"}
# A problem is an operation and two operands in [min, max] (default [0, 50]); subtraction keeps the result non-negative.
# by=pair (default): one problem in ten, chosen by a hash of "a op b", belongs to the held-out set and
# the others to the train set, so held-out prompts ask sums the model never saw, whatever n and seed.
# by=prompt: one prompt text in ten is held out instead: held-out prompts are worded as no training
# prompt is ("Compute 7 + 3." held out while "What is 7 + 3?" is taught), over the same problems.
# words (0..1, default 0) is the share of problems asked as a short word problem instead of a formula.
# The assistant answer restates the problem, then gives the result: "23 + 45 = 68. The answer is 68.";
# with steps=1 it works digit by digit first, ones then tens, with the carry or borrow:
# "47 + 38: 7 + 8 = 15. 4 + 3 + 1 = 8. The answer is 85."
# noise (0..1, default 0) is the share of SFT demonstrations whose final answer is off by one, as a
# careless labeller writes them: supervised learning copies the slips, a reward for the right answer
# unlearns them (docs/DEMO.md). The prompts' "answer" is always right.
# A Park-Miller generator (not awk's rand, which differs between awk implementations) makes the
# output identical everywhere.
function next_rand() { state = (state * 48271) % 2147483647; return state }
function below(k) { return next_rand() % k }
# Held out: one key in ten, by a hash of its text (a polynomial string hash, then Fibonacci hashing's
# high digits, so that structured keys such as "3 + 7" and "4 + 6" do not fall together).
function heldout(key,    h, i) {
    h = 0
    for (i = 1; i <= length(key); i++) h = (h * 131 + ord[substr(key, i, 1)]) % 1000000007
    return int((h * 0.6180339887498949 - int(h * 0.6180339887498949)) * 1000) % 10 == 0
}
# The worked answer: the problem, then digit by digit, ones first: "47 + 38: 7 + 8 = 15. 4 + 3 + 1 = 8."
function worked(op, a, b, r,    a0, a1, b0, b1, s, c) {
    if (a < 10 && b < 10) return a " " op " " b " = " r "."
    a0 = a % 10; a1 = int(a / 10); b0 = b % 10; b1 = int(b / 10)
    s = a " " op " " b ": "
    if (op == "+") {
        s = s a0 " + " b0 " = " (a0 + b0) ". "
        c = a0 + b0 >= 10
        s = s a1 " + " b1 (c ? " + 1" : "") " = " (a1 + b1 + c) "."
    } else {
        c = a0 < b0
        s = s (c ? "1" a0 : a0) " - " b0 " = " (a0 + 10 * c - b0) ". "
        s = s a1 (c ? " - 1" : "") " - " b1 " = " (a1 - c - b1) "."
    }
    return s
}
function word_problem(op, a, b,    who, what) {
    who = names[below(nnames) + 1]; what = things[below(nthings) + 1]
    if (op == "+") {
        if (below(2)) return who " has " a " " what ". " who " gets " b " more. How many " what " does " who " have now?"
        return "There are " a " " what " in a box and " b " in a bag. How many " what " are there in all?"
    }
    if (below(2)) return who " has " a " " what " and gives " b " away. How many " what " are left?"
    return "A shelf holds " a " " what ". " b " are taken. How many " what " remain on the shelf?"
}
function ask(op, a, b) {
    if (below(1000) < words * 1000) return word_problem(op, a, b)
    style = below(3)
    if (style == 0) return "What is " a " " op " " b "?"
    if (style == 1) return "Compute " a " " op " " b "."
    return a " " op " " b " = ?"
}
BEGIN {
    for (i = 32; i < 127; i++) ord[sprintf("%c", i)] = i
    if (by == "") by = "pair"
    if (by != "pair" && by != "prompt") { print "tasks.awk: by must be pair or prompt" > "/dev/stderr"; exit 2 }
    if (kind == "") kind = "sft"
    if (kind != "sft" && kind != "prompts") { print "tasks.awk: kind must be sft or prompts" > "/dev/stderr"; exit 2 }
    if (set == "") set = "train"
    if (set != "train" && set != "heldout") { print "tasks.awk: set must be train or heldout" > "/dev/stderr"; exit 2 }
    if (n == "") n = 100
    if (max == "") max = 50
    if (min == "") min = 0
    if (ops == "") ops = "+-"
    if (words == "") words = 0
    nnames = split("Ann Ben Carla Dan Eve Finn Gina Hugo Ida Jon", names, " ")
    nthings = split("apples books coins cards pens stamps marbles shells", things, " ")
    state = (seed == "" ? 1 : seed) % 2147483646 + 1
    for (i = 0; i < 10; i++) next_rand()
    nops = length(ops)
    want_heldout = set == "heldout"
    for (i = 0; i < n; i++) {
        do {
            op = substr(ops, below(nops) + 1, 1)
            a = min + below(max - min + 1); b = min + below(max - min + 1)
            if (op == "-" && b > a) { t = a; a = b; b = t }
            if (by == "prompt") q = ask(op, a, b)
        } while (heldout(by == "prompt" ? q : a " " op " " b) != want_heldout)
        if (by == "pair") q = ask(op, a, b)
        r = (op == "+") ? a + b : a - b
        w = steps ? worked(op, a, b, r) : a " " op " " b " = " r "."
        said = r
        if (noise > 0 && below(1000) < noise * 1000) said = (r == 0 || below(2)) ? r + 1 : r - 1
        if (kind == "sft")
            printf "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"},{\"role\":\"assistant\",\"content\":\"%s The answer is %d.\"}]}\n", q, w, said
        else
            printf "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],\"answer\":\"%d\"}\n", q, r
    }
}
