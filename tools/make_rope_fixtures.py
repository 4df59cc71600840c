#!/usr/bin/env python3
"""RoPE-scaling fixtures: tiny random models with YaRN and linear scaling in config.json,
checked by transformers, and GGUF files of them written by llama.cpp's own converter.

Setup (once): pip install torch transformers safetensors numpy; llama.cpp's source (the
llama-cpp-python sdist carries it: vendor/llama.cpp with convert_hf_to_gguf.py, conversion/ and
gguf-py/). Run from the repository root:
    LLAMA_CPP=/path/to/vendor/llama.cpp python3 tools/make_rope_fixtures.py

Writes tests/fixtures/rope/<name>/ for
  yarn-qwen2     Qwen2 (q/k/v bias, tied embeddings) with the long-context setting Qwen2.5 ships:
                 {"type": "yarn", "factor": 4, "original_max_position_embeddings": 16}; the
                 attention factor is the derived 0.1·ln 4 + 1
  yarn-llama     Llama with every YaRN field set: beta_fast 8, beta_slow 2, truncate false,
                 mscale 1.2 and mscale_all_dim 0.8 (attention factor from the two)
  linear-llama   Llama with {"rope_type": "linear", "factor": 2}
each with
  config.json, model.safetensors  the model (save_pretrained, f32)
  reference.safetensors           input_ids (int32 [2, 24]: positions pass the original 16),
                                  labels, logits, loss (mean cross-entropy), inv_freq (the
                                  rotary embedding's buffer) and attention_scaling (its cos/sin
                                  factor) as transformers computes them
and the GGUF files, by llama.cpp's converter (its model classes; only the vocabulary is a stub
of `vocab_size` tokens with one merge, since the tiny models have no tokenizer):
  llama3.gguf    tests/fixtures/tiny-llama (llama3 scaling) → `rope_freqs.weight`, no scaling type
  linear.gguf    linear-llama → rope.scaling.type = linear, rope.scaling.factor = 2
  yarn.gguf      yarn-qwen2 → rope.scaling.type = yarn, factor, original_context_length
The Rust test compares kiln on each GGUF with the transformers logits of its source folder.
"""
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
OUT = FIX / "rope"
COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
              initializer_range=0.25, rms_norm_eps=1e-5)

MODELS = {
    # head_dim 16: 8 frequencies, so the ramp between extrapolated and interpolated ones has
    # several entries inside it.
    "yarn-qwen2": Qwen2Config(**COMMON, rope_theta=10000.0, tie_word_embeddings=True,
                              rope_scaling={"type": "yarn", "factor": 4.0,
                                            "original_max_position_embeddings": 16}),
    "yarn-llama": LlamaConfig(**COMMON, rope_theta=500.0, tie_word_embeddings=False,
                              rope_scaling={"rope_type": "yarn", "factor": 8.0,
                                            "original_max_position_embeddings": 16,
                                            "beta_fast": 8.0, "beta_slow": 2.0, "truncate": False,
                                            "mscale": 1.2, "mscale_all_dim": 0.8}),
    "linear-llama": LlamaConfig(**COMMON, rope_theta=10000.0, tie_word_embeddings=False,
                                rope_scaling={"rope_type": "linear", "factor": 2.0}),
}


def reference(name, cfg, seed):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager").eval()
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=g)
    labels = ids.clone()
    labels[0, :3] = -100
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    rot = model.model.rotary_emb
    save_file({
        "input_ids": ids.to(torch.int32).contiguous(),
        "labels": labels.to(torch.int32).contiguous(),
        "logits": out.logits.float().contiguous(),
        "loss": out.loss.reshape(1).float(),
        "inv_freq": rot.inv_freq.float().contiguous(),
        "attention_scaling": torch.tensor([float(rot.attention_scaling)], dtype=torch.float32),
    }, d / "reference.safetensors")
    print(f"{name}: loss {out.loss.item():.6f}, attention_scaling {rot.attention_scaling}")


def convert(src: Path, out: Path):
    """llama.cpp's converter on `src`, with a stub vocabulary of `vocab_size` tokens."""
    lc = Path(os.environ["LLAMA_CPP"])
    sys.path[:0] = [str(lc), str(lc / "gguf-py")]
    import gguf
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    hparams = ModelBase.load_hparams(src, False)
    cls = get_model_class(get_model_architecture(hparams, ModelType.TEXT))

    class Stub(cls):
        model_arch = cls.model_arch

        def set_vocab(self):
            n = self.hparams["vocab_size"]
            self.gguf_writer.add_tokenizer_model("gpt2")
            self.gguf_writer.add_tokenizer_pre("default")
            # "a", "b" and their merge "ab", then placeholders: a BPE vocabulary kiln can read.
            self.gguf_writer.add_token_list(["a", "b", "ab"] + [f"<t{i}>" for i in range(3, n)])
            self.gguf_writer.add_token_types([gguf.TokenType.NORMAL] * n)
            self.gguf_writer.add_token_merges(["a b"])

    with torch.inference_mode():
        m = Stub(src, gguf.LlamaFileType.ALL_F32, out, eager=True, model_name=src.name)
        m.write()
    print(f"{out.name}: written from {src.name} by {cls.__name__}")


def main():
    for i, (name, cfg) in enumerate(MODELS.items()):
        reference(name, cfg, 100 + i)
    convert(FIX / "tiny-llama", OUT / "llama3.gguf")
    convert(OUT / "linear-llama", OUT / "linear.gguf")
    convert(OUT / "yarn-qwen2", OUT / "yarn.gguf")
    import transformers
    (OUT / "reference.json").write_text(json.dumps({
        "torch": torch.__version__, "transformers": transformers.__version__,
        "llama_cpp": os.path.basename(os.path.dirname(os.path.dirname(os.environ["LLAMA_CPP"]))),
    }, indent=1) + "\n")


if __name__ == "__main__":
    main()
