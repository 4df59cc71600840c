#!/usr/bin/env python3
"""A random model with SmolLM2-135M's exact shapes, or with `--shape 1b` a 1B-class Llama's
(Llama-3.2-1B: hidden 2048, 16 layers, 32 query / 8 KV heads, vocab 128 256), for memory and
speed measurements only (the weights are random).
Usage: python3 tools/make_smollm2_shaped.py OUT_DIR [--dtype bfloat16|float32] [--shape 135m|1b]"""
import argparse

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--dtype", default="bfloat16")
ap.add_argument("--shape", default="135m", choices=["135m", "1b"])
a = ap.parse_args()
# After the arguments: they parse (and --help works) without torch installed.
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

if a.shape == "1b":
    cfg = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                      rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True)
else:
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)
torch.manual_seed(0)
m = AutoModelForCausalLM.from_config(cfg, torch_dtype=getattr(torch, a.dtype))
m.save_pretrained(a.out, safe_serialization=True)
print(a.out, sum(p.numel() for p in m.parameters()), "params")
