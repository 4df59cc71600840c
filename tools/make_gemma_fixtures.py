#!/usr/bin/env python3
"""Gemma 2 and Gemma 3 fixtures: tiny random text models written by transformers, their logits,
loss and PEFT LoRA gradients, and GGUF files of them written by llama.cpp's own converter.

Setup (once): pip install torch transformers peft safetensors numpy; llama.cpp's source (the
llama-cpp-python sdist carries it: vendor/llama.cpp with convert_hf_to_gguf.py, conversion/ and
gguf-py/). Run from the repository root:
    LLAMA_CPP=/path/to/vendor/llama.cpp python3 tools/make_gemma_fixtures.py

Writes tests/fixtures/gemma/<name>/ for
  gemma3   Gemma3ForCausalLM: 6 layers, sliding window 8 on layers 0-4 and a global layer 5 (the
           layout of `sliding_window_pattern` 6, which llama.cpp assumes), q/k norms, head_dim 8
           (hidden 24 / 4 heads would be 6), GQA (2 KV heads), tied embeddings, RoPE θ 10 000 on
           sliding layers and 1 000 000 with linear scaling (factor 2) on the global one
  gemma2   Gemma2ForCausalLM: 4 layers alternating sliding (window 8) and global, attention
           soft-cap 3 and final-logit soft-cap 5 (small, so tanh bends the values these tiny
           models produce), head_dim 8, GQA
each with
  config.json, model.safetensors   the model (save_pretrained, f32; every norm weight random
                                   around 0, as transformers applies 1 + w)
  reference.safetensors            rows of 24 tokens (the window of 8 matters): input_ids,
                                   labels (int32, -100 ignored), logits, loss, and for a PEFT LoRA
                                   (r 4, alpha 8, q/k/v/o/gate/up/down, random A and B)
                                   lora_A.<module>, lora_B.<module>, grad_A.<module>, grad_B.<module>
  short.safetensors                the same (less lora_A/B) for the first 8 tokens of each row
                                   (no key falls out of a window)
  model.gguf                       llama.cpp's converter on the folder (norms stored as 1 + w;
                                   the vocabulary is a stub of vocab_size tokens, the tiny models
                                   have no tokenizer)
and tests/fixtures/gemma/reference.json with the versions.
"""
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig
import transformers
import peft
from peft import LoraConfig, get_peft_model

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gemma"
COMMON = dict(vocab_size=128, hidden_size=24, intermediate_size=32, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
              # query_pre_attn_scalar = head_dim: llama.cpp's scale (1/√head_dim) for every size
              # but 27B, so the GGUF computes what the folder does.
              query_pre_attn_scalar=8, sliding_window=8, rms_norm_eps=1e-6,
              initializer_range=0.25, tie_word_embeddings=True)
MODELS = {
    "gemma3": Gemma3TextConfig(
        **COMMON, num_hidden_layers=6,
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}),
    "gemma2": Gemma2Config(**COMMON, num_hidden_layers=4, attn_logit_softcapping=3.0,
                           final_logit_softcapping=5.0,
                           rope_parameters={"rope_type": "default", "rope_theta": 10_000.0}),
}
R, ALPHA = 4, 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEQ, SHORT = 24, 8


def run(pm, ids, labels):
    """Logits, loss and LoRA gradients of the PEFT model on one batch."""
    pm.zero_grad()
    res = pm(input_ids=ids, labels=labels)
    res.loss.backward()
    t = {"input_ids": ids.to(torch.int32).contiguous(), "labels": labels.to(torch.int32).contiguous(),
         "logits": res.logits.detach().float().contiguous(), "loss": res.loss.detach().reshape(1)}
    for n, p in pm.named_parameters():
        if "lora_" not in n:
            continue
        module = n.split("base_model.model.", 1)[1].split(".lora_")[0]
        which = "A" if ".lora_A." in n else "B"
        t[f"lora_{which}.{module}"] = p.detach().clone().contiguous()
        t[f"grad_{which}.{module}"] = p.grad.detach().clone().contiguous()
    return t, res.loss.item()


def reference(name, cfg, seed):
    torch.manual_seed(seed)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                # Around 0: transformers multiplies by 1 + w, so a loader that forgot the 1
                # would scale by ~0.1 and fail by far.
                p.copy_(0.3 * torch.randn_like(p))
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, cfg.vocab_size, (2, SEQ), generator=g)
    labels = ids.clone()
    labels[0, :3] = -100
    labels[1, 5] = -100
    lcfg = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, init_lora_weights=False)
    pm = get_peft_model(model, lcfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    pm.train()
    long, loss = run(pm, ids, labels)
    short, sloss = run(pm, ids[:, :SHORT].contiguous(), labels[:, :SHORT].contiguous())
    # The window must matter on the long rows: the same model without it differs.
    with torch.no_grad():
        # A window longer than the rows masks nothing.
        pm.base_model.model.config.sliding_window = 10_000
        nowin = pm(input_ids=ids, use_cache=False).logits
        pm.base_model.model.config.sliding_window = cfg.sliding_window
    gap = (nowin - long["logits"]).norm() / long["logits"].norm()
    assert gap > 1e-2, f"{name}: the sliding window changes the logits by only {gap}"
    save_file(long, d / "reference.safetensors")
    # The adapter is the same for both lengths: its A and B are stored once.
    save_file({k: v for k, v in short.items() if not k.startswith("lora_")}, d / "short.safetensors")
    print(f"{name}: loss {loss:.6f} (short rows {sloss:.6f}); without the window logits differ by {gap:.3f}")


def convert(src: Path, out: Path):
    """llama.cpp's converter on `src`, with a stub vocabulary of `vocab_size` tokens."""
    lc = Path(os.environ["LLAMA_CPP"])
    sys.path[:0] = [str(lc), str(lc / "gguf-py")]
    import gguf
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    # The converter trims Gemma 3's embedding to the tokenizer's size: a tokenizer.json of
    # vocab_size entries beside a copy of the model keeps every row.
    tmp = Path(tempfile.mkdtemp(prefix="gemma-gguf-"))
    for f in ("config.json", "model.safetensors"):
        shutil.copy(src / f, tmp / f)
    n = json.loads((src / "config.json").read_text())["vocab_size"]
    (tmp / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {f"<t{i}>": i for i in range(n)}},
                                                    "added_tokens": []}))
    hparams = ModelBase.load_hparams(tmp, False)
    cls = get_model_class(get_model_architecture(hparams, ModelType.TEXT))

    class Stub(cls):
        model_arch = cls.model_arch

        def set_vocab(self):
            self.gguf_writer.add_tokenizer_model("gpt2")
            self.gguf_writer.add_tokenizer_pre("default")
            self.gguf_writer.add_token_list(["a", "b", "ab"] + [f"<t{i}>" for i in range(3, n)])
            self.gguf_writer.add_token_types([gguf.TokenType.NORMAL] * n)
            self.gguf_writer.add_token_merges(["a b"])

    with torch.inference_mode():
        m = Stub(tmp, gguf.LlamaFileType.ALL_F32, out, eager=True, model_name=src.name)
        m.write()
    shutil.rmtree(tmp)
    print(f"{out.name}: written from {src.name} by {cls.__name__}")


def main():
    torch.use_deterministic_algorithms(True)
    for i, (name, cfg) in enumerate(MODELS.items()):
        reference(name, cfg, 300 + i)
        convert(OUT / name, OUT / name / "model.gguf")
    (OUT / "reference.json").write_text(json.dumps({
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "lora_r": R, "lora_alpha": ALPHA,
        "llama_cpp": os.path.basename(os.path.dirname(os.path.dirname(os.environ["LLAMA_CPP"]))),
    }, indent=1) + "\n")


if __name__ == "__main__":
    main()
