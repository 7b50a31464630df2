"""The SFT loss of a checkpoint on a set of conversations, computed independently of libds.

usage: sft_ref.py CKPT_DIR chat.jsonl

Each conversation is rendered in DeepSeek-V3's chat format (spec 8.1; what share/chat_template says),
tokenized with Hugging Face `tokenizers` from the checkpoint's tokenizer.json (template text with its
special tokens, message content as plain text, piece by piece), and run ALONE through transformers'
DeepseekV3ForCausalLM (no packing, positions from 0). The loss is the cross-entropy of the tokens of
assistant content and of the end-of-sentence token closing each assistant turn, summed over all
conversations and divided by their count. Prints "loss <mean> tokens <count>".
"""
import json
import sys

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"


def pieces(messages):
    """(text, is_template, trained) in order."""
    out = [(BOS, True, False)]
    systems = [m["content"] for m in messages if m["role"] == "system"]
    for i, s in enumerate(systems):
        if i:
            out.append(("\n\n", True, False))
        out.append((s, False, False))
    for m in messages:
        if m["role"] == "user":
            out += [(USER, True, False), (m["content"], False, False)]
        elif m["role"] == "assistant":
            out += [(ASSISTANT, True, False), (m["content"], False, True), (EOS, True, True)]
    return out


def main():
    ckpt, data = sys.argv[1], sys.argv[2]
    tok = Tokenizer.from_file(f"{ckpt}/tokenizer.json")
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    model.eval()
    total, count = 0.0, 0
    for line in open(data):
        if not line.strip():
            continue
        ids, mask = [], []
        for text, _, trained in pieces(json.loads(line)["messages"]):
            enc = tok.encode(text, add_special_tokens=False).ids
            ids += enc
            mask += [trained] * len(enc)
        x = torch.tensor([ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(x).logits[0].double(), dim=-1)
        for t in range(1, len(ids)):
            if mask[t]:
                total -= float(logp[t - 1, ids[t]])
                count += 1
    print(f"loss {total / count:.9g} tokens {count}")


if __name__ == "__main__":
    main()
