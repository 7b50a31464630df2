"""The reference for bench/serve.sh: transformers' generate behind a minimal OpenAI-style HTTP server.

    serve_ref.py CKPT PORT

POST /v1/completions with prompt (a string), max_tokens, temperature (0: greedy, else sampling), stream and
stream_options.include_usage; the text is BOS + the prompt through the checkpoint's tokenizer.json, as
ds-generate --serve reads it, and every answer has exactly max_tokens tokens (EOS ignored, as the
benchmark runs ds-generate with --ignore-eos). One generate at a time, in arrival order: transformers has no
continuous batching, and a minimal server holds a lock around the model. Threads: DS_THREADS (2).
"""
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

ckpt, port = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(int(os.environ.get("DS_THREADS", "2")))
model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
tok = Tokenizer.from_file(os.path.join(ckpt, "tokenizer.json"))
bos = model.config.bos_token_id
name = os.path.basename(os.path.normpath(ckpt))
lock = threading.Lock()


class Streamer:
    """transformers' streamer interface: put() gets the prompt first, then each new token."""

    def __init__(self, emit):
        self.emit, self.prompt_seen = emit, False

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for t in value.reshape(-1).tolist():
            self.emit(t)

    def end(self):
        pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send_json(self, code, obj):
        b = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def do_GET(self):
        if self.path == "/health":
            return self.send_json(200, {"status": "ok"})
        self.send_json(404, {"error": {"message": "unknown URL", "type": "invalid_request_error", "param": None, "code": None}})

    def do_POST(self):
        q = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ids = [bos] + tok.encode(q["prompt"], add_special_tokens=False).ids
        n, temp, stream = q.get("max_tokens", 16), q.get("temperature", 1.0), q.get("stream", False)
        x = torch.tensor([ids])
        kw = dict(max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=0,
                  attention_mask=torch.ones_like(x), do_sample=temp > 0)
        if temp > 0:
            kw.update(temperature=temp, top_k=0, top_p=q.get("top_p", 1.0))
        head = {"id": "cmpl-ref", "object": "text_completion", "created": int(time.time()), "model": name}
        if not stream:
            with lock, torch.no_grad():
                out = model.generate(x, **kw)[0, len(ids):].tolist()
            return self.send_json(200, dict(head, choices=[{"index": 0, "text": tok.decode(out, skip_special_tokens=False),
                                                            "logprobs": None, "finish_reason": "length"}],
                                            usage={"prompt_tokens": len(ids), "completion_tokens": len(out),
                                                   "total_tokens": len(ids) + len(out)}))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def event(obj):
            b = ("data: " + (obj if isinstance(obj, str) else json.dumps(obj)) + "\n\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))
            self.wfile.flush()

        count = [0]

        def emit(t):
            count[0] += 1
            event(dict(head, choices=[{"index": 0, "text": tok.decode([t], skip_special_tokens=False),
                                       "logprobs": None, "finish_reason": None}]))

        with lock, torch.no_grad():
            model.generate(x, streamer=Streamer(emit), **kw)
        event(dict(head, choices=[{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}]))
        if (q.get("stream_options") or {}).get("include_usage"):
            event(dict(head, choices=[], usage={"prompt_tokens": len(ids), "completion_tokens": count[0],
                                                "total_tokens": len(ids) + count[0]}))
        event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


with torch.no_grad():  # warm-up: the first generate pays for lazy initialisation
    model.generate(torch.tensor([[bos, 5, 6]]), max_new_tokens=2, do_sample=False, pad_token_id=0)
ThreadingHTTPServer.request_queue_size = 128  # the default 5 refuses some of 16 clients connecting at once
srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
srv.daemon_threads = True
print("http://127.0.0.1:%d" % srv.server_address[1], flush=True)
srv.serve_forever()
