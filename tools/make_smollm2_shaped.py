#!/usr/bin/env python3
"""A random model with SmolLM2-135M's exact shapes (for memory and speed measurements only; the
weights are random). Usage: python3 tools/make_smollm2_shaped.py OUT_DIR [--dtype bfloat16|float32]"""
import argparse

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--dtype", default="bfloat16")
a = ap.parse_args()
cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                  rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)
torch.manual_seed(0)
m = AutoModelForCausalLM.from_config(cfg, torch_dtype=getattr(torch, a.dtype))
m.save_pretrained(a.out, safe_serialization=True)
print(a.out, sum(p.numel() for p in m.parameters()), "params")
