"""Load for bench/serve.sh: C clients at once, each sending streamed greedy completions one after another
through the `openai` client, and what each request saw.

    serve_load.py URL MODEL CLIENTS REQUESTS_PER_CLIENT MAX_TOKENS

Prompts are lines of the GPL (different per request). Per request: time to first token (the first event
with a choice), decode tokens/s ((completion tokens - 1) / (end - first token)). Prints one JSON object:
throughput (all completion tokens / wall time), medians and p90s.
"""
import json
import sys
import threading
import time

import openai

url, model, clients, per, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
lines = [s.strip() for s in open("/usr/share/common-licenses/GPL-3") if len(s.strip()) > 40]
results, errors = [], []


def one(c, prompt):
    t0 = time.perf_counter()
    first, tokens = None, 0
    for ch in c.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
                                   stream_options={"include_usage": True}):
        if ch.choices and first is None:
            first = time.perf_counter()
        if ch.usage:
            tokens = ch.usage.completion_tokens
    t1 = time.perf_counter()
    return {"ttft": first - t0, "tokens": tokens, "tps": (tokens - 1) / (t1 - first) if t1 > first else 0, "total": t1 - t0}


def client(i, barrier):
    c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)
    barrier.wait()
    for r in range(per):
        try:
            results.append(one(c, lines[(i * per + r) % len(lines)]))
        except Exception as e:
            errors.append(repr(e))


def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


barrier = threading.Barrier(clients + 1)
ts = [threading.Thread(target=client, args=(i, barrier)) for i in range(clients)]
for t in ts:
    t.start()
barrier.wait()
t0 = time.perf_counter()
for t in ts:
    t.join()
wall = time.perf_counter() - t0
if errors:
    sys.exit("errors: " + "; ".join(errors[:3]))
print(json.dumps({"clients": clients, "requests": len(results), "wall_s": wall,
                  "throughput_tok_s": sum(r["tokens"] for r in results) / wall,
                  "ttft_median_s": q([r["ttft"] for r in results], 0.5), "ttft_p90_s": q([r["ttft"] for r in results], 0.9),
                  "tps_median": q([r["tps"] for r in results], 0.5), "tps_p10": q([r["tps"] for r in results], 0.1),
                  "tokens": sum(r["tokens"] for r in results)}))
