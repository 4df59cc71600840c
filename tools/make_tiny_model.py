#!/usr/bin/env python3
"""A small random Llama over the fixture BPE tokenizer (tests/fixtures/tokenizer), with the
shapes of the training tests (vocab 709, hidden 64, 2 layers, 4 heads, 2 KV heads), and a
dataset of short prompt/completion rows: for comparing training runs across backends on a
machine without Rust (tools/gpu-check.sh). Usage: python3 tools/make_tiny_model.py OUT_DIR"""
import json
import os
import shutil
import sys

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

out = sys.argv[1]
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
cfg = LlamaConfig(vocab_size=709, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  rms_norm_eps=1e-5, initializer_range=0.1, tie_word_embeddings=False)
torch.manual_seed(7)
AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32).save_pretrained(
    os.path.join(out, "model"), safe_serialization=True)
for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    shutil.copy(os.path.join(root, "tests/fixtures/tokenizer", f), os.path.join(out, "model", f))
with open(os.path.join(out, "data.jsonl"), "w") as fh:
    for i in range(24):
        fh.write(json.dumps({"prompt": f"colour {i}?", "completion": f"blue {i % 4}"}) + "\n")
print(out)
