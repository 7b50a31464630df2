"""Reference side of tests/ref/hf.bats: transformers on a checkpoint these tools wrote.

  hf_ref.py render DIR CONVS [TEMPLATE]
        AutoTokenizer.from_pretrained(DIR) + apply_chat_template for every conversation of the JSONL file
        CONVS, without and with the generation prompt: one JSON line each, {"text", "ids", "gen_text",
        "gen_ids"}. With TEMPLATE (a Jinja file), that template instead of the checkpoint's.
  hf_ref.py decode DIR IDS
        the text of every JSON list of token ids in the file IDS, one JSON string per line.
  hf_ref.py generate DIR CONVS N
        greedy generate of N new tokens (AutoModelForCausalLM, fp32) after apply_chat_template(...,
        add_generation_prompt=True): one JSON line per conversation, {"tokens"}; generation_config.json
        supplies the special tokens (greedy is asked for here: the file's defaults sample). With N "-",
        generate() with no arguments: the checkpoint's generation_config.json decides everything
        (do_sample, max_new_tokens / max_length, the eos ids).
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

logging.set_verbosity_error()
cmd, d = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(d)
if cmd == "decode":
    for l in open(sys.argv[3]):
        print(json.dumps(tok.decode(json.loads(l)), ensure_ascii=False))
    sys.exit(0)
convs = [json.loads(l)["messages"] for l in open(sys.argv[3]) if l.strip()]


def ids_of(x):  # apply_chat_template(tokenize=True) returns a list, or a BatchEncoding in transformers v5
    return list(x["input_ids"]) if hasattr(x, "keys") else list(x)


if cmd == "render":
    kw = {"chat_template": open(sys.argv[4]).read()} if len(sys.argv) > 4 else {}
    for m in convs:
        out = {}
        for gen, key in ((False, ""), (True, "gen_")):
            out[key + "text"] = tok.apply_chat_template(m, tokenize=False, add_generation_prompt=gen, **kw)
            out[key + "ids"] = ids_of(tok.apply_chat_template(m, tokenize=True, add_generation_prompt=gen, **kw))
        print(json.dumps(out, ensure_ascii=False))
elif cmd == "generate":
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    kw = {} if sys.argv[4] == "-" else {"max_new_tokens": int(sys.argv[4]), "do_sample": False}
    for m in convs:
        ids = ids_of(tok.apply_chat_template(m, tokenize=True, add_generation_prompt=True))
        out = model.generate(torch.tensor([ids]), **kw)
        print(json.dumps({"tokens": out[0, len(ids):].tolist()}))
