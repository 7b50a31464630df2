#!/usr/bin/awk -f
# Arithmetic tasks with checkable answers, as chat JSONL (SFT) and prompt JSONL (RL, evaluation).
# Usage: awk -f tasks.awk -v kind=sft|prompts -v n=N -v seed=S [-v max=M] [-v ops=+-]
#   kind=sft      {"messages":[{"role":"user",...},{"role":"assistant",...}]}
#   kind=prompts  {"messages":[{"role":"user",...}],"answer":"42"}
# Operands are drawn in [0, max]; subtraction keeps the result non-negative. A Park-Miller generator
# (not awk's rand, which differs between awk implementations) makes the output identical everywhere.
function next_rand() { state = (state * 48271) % 2147483647; return state }
function below(k) { return next_rand() % k }
BEGIN {
    if (kind == "") kind = "sft"
    if (n == "") n = 100
    if (max == "") max = 50
    if (ops == "") ops = "+-"
    state = (seed == "" ? 1 : seed) % 2147483646 + 1
    for (i = 0; i < 10; i++) next_rand()
    nops = length(ops)
    for (i = 0; i < n; i++) {
        op = substr(ops, below(nops) + 1, 1)
        a = below(max + 1); b = below(max + 1)
        if (op == "-" && b > a) { t = a; a = b; b = t }
        r = (op == "+") ? a + b : a - b
        style = below(3)
        if (style == 0) q = "What is " a " " op " " b "?"
        else if (style == 1) q = "Compute " a " " op " " b "."
        else q = a " " op " " b " = ?"
        if (kind == "sft")
            printf "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"},{\"role\":\"assistant\",\"content\":\"%d %s %d = %d. The answer is %d.\"}]}\n", q, a, op, b, r, r
        else
            printf "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],\"answer\":\"%d\"}\n", q, r
    }
}
