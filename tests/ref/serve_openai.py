"""ds-generate --serve driven by the `openai` Python client (PyPI; written by OpenAI, not here), on loopback.

    serve_openai.py CHECK URL MODEL [ARGS...]

Checks (each prints what it compared and exits non-zero on a mismatch):
  complete PROMPT N     greedy /v1/completions, streamed and not: same text; prints {"text", "finish_reason"}
  chat PROMPT N         the same for /v1/chat/completions
  concurrent N          N requests at once (chat and completions, streamed and not, different lengths) give
                        exactly the answers they give one at a time
  seeded                sampling with a seed: repeatable, choice i of n independent of n and of the load
  logprobs              chat logprobs/top_logprobs and completions logprobs: greedy picks the top entry,
                        alternatives sorted, texts join to the completion; prints the completion's logprobs
  errors                4xx statuses and OpenAI error bodies through the client's exceptions and raw HTTP
  disconnect            a client that leaves mid-stream: its sequence stops (the server's counters say so)
                        and the server keeps serving
"""
import http.client
import json
import sys
import threading
import time
import urllib.parse

import openai


def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def complete(c, model, prompt, n, stream=False, **kw):
    """(text, finish_reason) of a greedy completion."""
    if not stream:
        r = c.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0, **kw)
        return r.choices[0].text, r.choices[0].finish_reason
    text, finish = "", None
    for ch in c.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0, stream=True, **kw):
        for x in ch.choices:
            text += x.text
            finish = x.finish_reason or finish
    return text, finish


def chat(c, model, prompt, n, stream=False, **kw):
    msgs = [{"role": "user", "content": prompt}]
    if not stream:
        r = c.chat.completions.create(model=model, messages=msgs, max_tokens=n, temperature=0, **kw)
        if r.choices[0].message.role != "assistant":
            fail("role " + r.choices[0].message.role)
        return r.choices[0].message.content, r.choices[0].finish_reason
    text, finish, role = "", None, None
    for ch in c.chat.completions.create(model=model, messages=msgs, max_tokens=n, temperature=0, stream=True, **kw):
        for x in ch.choices:
            role = x.delta.role or role
            text += x.delta.content or ""
            finish = x.finish_reason or finish
    if role != "assistant":
        fail("streamed role %r" % role)
    return text, finish


def check_one(kind, url, model, prompt, n):
    c = client(url)
    f = complete if kind == "complete" else chat
    a = f(c, model, prompt, int(n))
    b = f(c, model, prompt, int(n), stream=True)
    if a != b:
        fail("streamed %r != %r" % (b, a))
    print(json.dumps({"text": a[0], "finish_reason": a[1]}))


PROMPTS = ["The license", "You may convey", "free software", "Each licensee", "the GNU General Public License",
           "copyright", "distribute", "This program is", "modify it", "warranty", "source code", "patent",
           "For example", "in the hope that", "Preamble", "TERMS AND CONDITIONS"]


def job(i):
    """The i-th request of the concurrency check: kind, streaming and length vary with i."""
    return ("chat" if i % 2 else "complete", PROMPTS[i % len(PROMPTS)], 5 + 3 * i, i % 3 == 0)


def run_job(c, model, i):
    kind, p, n, stream = job(i)
    return (chat if kind == "chat" else complete)(c, model, p, n, stream=stream)


def check_concurrent(url, model, n):
    n = int(n)
    c = client(url)
    alone = [run_job(c, model, i) for i in range(n)]
    together = [None] * n
    errors = []
    start = threading.Barrier(n)

    def worker(i):
        try:
            start.wait()
            together[i] = run_job(client(url), model, i)
        except Exception as e:  # reported below
            errors.append("%d: %r" % (i, e))

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        fail("; ".join(errors))
    for i in range(n):
        if together[i] != alone[i]:
            fail("request %d %r: concurrent %r != alone %r" % (i, job(i), together[i], alone[i]))
    lengths = sorted(len(a[0]) for a in alone)
    print("%d concurrent requests equal one-at-a-time; text lengths %d..%d" % (n, lengths[0], lengths[-1]))


def check_seeded(url, model):
    c = client(url)

    def ask(n, seed, prompt="The license"):
        r = c.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=1.0, top_p=0.95, seed=seed, n=n)
        return [x.text for x in sorted(r.choices, key=lambda x: x.index)]

    three = ask(3, 42)
    if len(three) != 3:
        fail("n=3 gave %d choices" % len(three))
    if ask(3, 42) != three:
        fail("the seed does not repeat")
    if ask(1, 42) != three[:1]:
        fail("choice 0 of n=3 != the n=1 answer")
    if len(set(three)) < 2:
        fail("three choices all equal: %r" % three)
    if ask(3, 43) == three:
        fail("another seed gives the same choices")
    # under load: the same seeded request among 8 others answers the same
    out = [None] * 8

    def w(i):
        out[i] = ask(3, 42) if i == 0 else ask(2, 100 + i, PROMPTS[i])

    ts = [threading.Thread(target=w, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if out[0] != three:
        fail("seeded answer under load %r != %r" % (out[0], three))
    print("seeded: repeatable, choice 0 of n=3 == n=1, independent of the load")


def check_logprobs(url, model):
    c = client(url)
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "The license"}], max_tokens=8,
                                  temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    if len(content) == 0:
        fail("no chat logprobs")
    for e in content:
        tops = [t.logprob for t in e.top_logprobs]
        if len(tops) != 3 or tops != sorted(tops, reverse=True):
            fail("top_logprobs not 3 sorted: %r" % tops)
        if abs(e.logprob - tops[0]) > 1e-6 or e.token != e.top_logprobs[0].token:
            fail("greedy token %r (%g) is not the top entry %r" % (e.token, e.logprob, e.top_logprobs[0]))
        if bytes(e.bytes).decode("utf-8", "replace") != e.token:
            fail("bytes %r vs token %r" % (e.bytes, e.token))
        if e.logprob > 0:
            fail("positive logprob")
    joined = b"".join(bytes(e.bytes) for e in content)
    try:  # a model this small may emit bytes that are no UTF-8: the content then holds U+FFFD instead
        if joined.decode("utf-8") != r.choices[0].message.content:
            fail("chat tokens do not join to the content")
    except UnicodeDecodeError:
        pass
    r = c.completions.create(model=model, prompt="The license", max_tokens=8, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    if len(lp.tokens) != len(lp.token_logprobs) or len(lp.tokens) != len(lp.top_logprobs):
        fail("completion logprobs lengths differ")
    clean = "\ufffd" not in r.choices[0].text
    off = 0
    for tok, l, top, o in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset):
        if clean and o != off:
            fail("text_offset %d, expected %d" % (o, off))
        off += len(tok.encode())
        if l < max(top.values()) - 1e-6:  # keys are token texts: equal texts share one key
            fail("greedy logprob %g is not the best alternative %r" % (l, top))
    if clean and "".join(lp.tokens) != r.choices[0].text:
        fail("completion tokens do not join to the text")
    print(json.dumps({"text": r.choices[0].text, "logprobs": lp.token_logprobs}))


def raw(url, method, path, body=None, headers=None):
    u = urllib.parse.urlparse(url)
    h = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    h.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
    r = h.getresponse()
    data = r.read()
    h.close()
    return r.status, data


def expect_error(what, status, body, param=None, code=None):
    try:
        e = json.loads(body)["error"]
    except Exception:
        fail("%s: not an OpenAI error body: %r" % (what, body))
    if not e.get("message") or "type" not in e or "param" not in e or "code" not in e:
        fail("%s: error body lacks fields: %r" % (what, e))
    if param is not None and e["param"] != param:
        fail("%s: param %r, expected %r" % (what, e["param"], param))
    if code is not None and e["code"] != code:
        fail("%s: code %r, expected %r" % (what, e["code"], code))
    print("%s: %d %s" % (what, status, e["message"]))


def check_errors(url, model):
    c = client(url)
    msgs = [{"role": "user", "content": "hi"}]
    cases = [
        ("bad temperature", openai.BadRequestError, 400, "temperature", None,
         lambda: c.chat.completions.create(model=model, messages=msgs, temperature=2.5)),
        ("unknown model", openai.NotFoundError, 404, "model", "model_not_found",
         lambda: c.chat.completions.create(model="no-such-model", messages=msgs)),
        ("max_tokens too large", openai.BadRequestError, 400, "max_tokens", "context_length_exceeded",
         lambda: c.completions.create(model=model, prompt="The license", max_tokens=100000)),
        ("n too large", openai.BadRequestError, 400, "n", None,
         lambda: c.completions.create(model=model, prompt="a", n=1000)),
        ("unsupported penalty", openai.BadRequestError, 400, "presence_penalty", None,
         lambda: c.completions.create(model=model, prompt="a", presence_penalty=1.0)),
        ("tool role", openai.BadRequestError, 400, "messages[0]", None,
         lambda: c.chat.completions.create(model=model, messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}])),
        ("top_logprobs without logprobs", openai.BadRequestError, 400, "top_logprobs", None,
         lambda: c.chat.completions.create(model=model, messages=msgs, top_logprobs=2)),
    ]
    for what, exc, status, param, code, call in cases:
        try:
            call()
        except exc as e:
            if e.status_code != status:
                fail("%s: status %d, expected %d" % (what, e.status_code, status))
            expect_error(what, e.status_code, e.response.content, param, code)
            continue
        fail("%s: no error" % what)
    for what, method, path, body, status in [
            ("bad JSON", "POST", "/v1/chat/completions", b'{"model": ', 400),
            ("not an object", "POST", "/v1/completions", b'[1, 2]', 400),
            ("wrong type", "POST", "/v1/completions", json.dumps({"model": model, "prompt": 5}).encode(), 400),
            ("unknown path", "GET", "/v1/nothing", None, 404),
            ("GET on completions", "GET", "/v1/completions", None, 405)]:
        st, data = raw(url, method, path, body)
        if st != status:
            fail("%s: status %d, expected %d: %r" % (what, st, status, data))
        expect_error(what, st, data)
    # the server still answers after all that
    if complete(c, model, "The license", 3)[1] not in ("length", "stop"):
        fail("no answer after the errors")


def health(url):
    st, data = raw(url, "GET", "/health")
    if st != 200:
        fail("health %d" % st)
    return json.loads(data)


def check_disconnect(url, model, max_tokens):
    max_tokens = int(max_tokens)
    c = client(url)
    before = health(url)
    s = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "The license"}],
                                  max_tokens=max_tokens, temperature=0, stream=True, stream_options={"include_usage": True})
    it = iter(s)
    next(it)
    s.close()  # leave mid-stream
    deadline = time.time() + 30
    while True:
        h = health(url)
        if h["running"] == 0 and h["cancelled"] > before["cancelled"]:
            break
        if time.time() > deadline:
            fail("the sequence still runs or was not cancelled: %r" % h)
        time.sleep(0.02)
    spent = h["completion_tokens"] - before["completion_tokens"]
    if spent >= max_tokens:
        fail("the abandoned stream generated all %d tokens" % spent)
    text, finish = chat(c, model, "You may convey", 4)
    if finish != "length":
        fail("no answer after the disconnect: %r" % finish)
    print("disconnect: the abandoned sequence stopped after %d of %d tokens; the next request answered" %
          (spent, max_tokens))


def main():
    what, url, model = sys.argv[1:4]
    args = sys.argv[4:]
    if what in ("complete", "chat"):
        check_one(what, url, model, *args)
    elif what == "concurrent":
        check_concurrent(url, model, *args)
    elif what == "seeded":
        check_seeded(url, model)
    elif what == "logprobs":
        check_logprobs(url, model)
    elif what == "errors":
        check_errors(url, model)
    elif what == "disconnect":
        check_disconnect(url, model, *args)
    else:
        fail("unknown check " + what)


if __name__ == "__main__":
    main()
