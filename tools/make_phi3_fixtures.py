#!/usr/bin/env python3
"""Phi-3 fixtures: tiny random Phi3ForCausalLM models checked by transformers, a PEFT LoRA on
the fused projections, and a GGUF written by llama.cpp's own converter.

Setup (once): pip install torch transformers peft safetensors numpy; llama.cpp's source (the
llama-cpp-python sdist carries it: vendor/llama.cpp with convert_hf_to_gguf.py, conversion/ and
gguf-py/). Run from the repository root:
    LLAMA_CPP=/path/to/vendor/llama.cpp python3 tools/make_phi3_fixtures.py

Writes tests/fixtures/phi3/<name>/ for
  phi3        Phi-3 shape: GQA (2 heads, 1 KV head, head_dim 16), fused qkv_proj and
              gate_up_proj, LongRoPE (`rope_scaling` {"type": "longrope", short_factor,
              long_factor}, original_max_position_embeddings 16, max_position_embeddings 64, so
              the attention factor is the derived √(1 + ln 4 / ln 16)), untied LM head
  phi4-mini   Phi-4-mini shape: partial_rotary_factor 0.75 (12 of 16 dims rotated, factor
              lists of 6), LongRoPE, tied embeddings
each with
  config.json, model.safetensors  the model (save_pretrained, f32)
  reference.safetensors           input_ids (int32 [2, 24]: positions pass the original 16, so
                                  the long factors apply), labels, logits, loss; short_ids
                                  ([2, 12]: the short factors apply) and short_logits
and for phi3 also
  adapter/                        a PEFT LoRA (r 4, alpha 8) on qkv_proj, o_proj, gate_up_proj,
                                  down_proj with random (non-zero) B, as PEFT saves it
  lora.safetensors                lora_logits, lora_loss and the gradient of every LoRA tensor
                                  (grad_A.<module>, grad_B.<module>, PEFT's fused names) of the
                                  loss on input_ids/labels
  phi3.gguf (beside the folders)  llama.cpp's converter on phi3 (f32; the vocabulary a stub of
                                  `vocab_size` tokens with one merge)
  phi3/window.safetensors         logits of phi3 with `sliding_window` 8 on input_ids (rows of
                                  24): transformers' sliding-window mask, as Mistral's

    python3 tools/make_phi3_fixtures.py --window-only   writes only window.safetensors from the
                                                        committed phi3 folder
"""
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, Phi3Config

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
OUT = FIX / "phi3"
COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
              original_max_position_embeddings=16, initializer_range=0.25, rms_norm_eps=1e-5,
              bos_token_id=1, eos_token_id=2, pad_token_id=0, sliding_window=None)


def factors(n, seed):
    g = torch.Generator().manual_seed(seed)
    short = (1.0 + 0.5 * torch.rand(n, generator=g)).tolist()
    long = (1.0 + 8.0 * torch.rand(n, generator=g)).tolist()
    return short, long


S8, L8 = factors(8, 7)
S6, L6 = factors(6, 8)
MODELS = {
    "phi3": Phi3Config(**COMMON, rope_theta=10000.0, tie_word_embeddings=False,
                       rope_scaling={"type": "longrope", "short_factor": S8, "long_factor": L8}),
    "phi4-mini": Phi3Config(**COMMON, rope_theta=10000.0, tie_word_embeddings=True,
                            partial_rotary_factor=0.75,
                            rope_scaling={"type": "longrope", "short_factor": S6, "long_factor": L6}),
}


def reference(name, cfg, seed):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager").eval()
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=g)
    short = torch.randint(0, cfg.vocab_size, (2, 12), generator=g)
    labels = ids.clone()
    labels[0, :3] = -100
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
        short_logits = model(input_ids=short).logits
    save_file({
        "input_ids": ids.to(torch.int32).contiguous(),
        "labels": labels.to(torch.int32).contiguous(),
        "logits": out.logits.float().contiguous(),
        "loss": out.loss.reshape(1).float(),
        "short_ids": short.to(torch.int32).contiguous(),
        "short_logits": short_logits.float().contiguous(),
    }, d / "reference.safetensors")
    print(f"{name}: loss {out.loss.item():.6f}")
    return model, ids, labels


def lora(model, ids, labels, seed):
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                     target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])
    pm = get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.1)
    out = pm(input_ids=ids, labels=labels)
    out.loss.backward()
    t = {"lora_logits": out.logits.detach().float().contiguous(), "lora_loss": out.loss.detach().reshape(1).float()}
    for n, p in pm.named_parameters():
        if "lora_" in n:
            # base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.default.weight
            m = n.removeprefix("base_model.model.").split(".lora_")[0]
            which = "A" if ".lora_A." in n else "B"
            t[f"grad_{which}.{m}"] = p.grad.float().contiguous()
    save_file(t, OUT / "phi3" / "lora.safetensors")
    pm.save_pretrained(OUT / "phi3" / "adapter")
    (OUT / "phi3" / "adapter" / "README.md").unlink(missing_ok=True)
    print(f"phi3 + LoRA: loss {out.loss.item():.6f}, {sum(k.startswith('grad_') for k in t)} gradients")


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
            self.gguf_writer.add_token_list(["a", "b", "ab"] + [f"<t{i}>" for i in range(3, n)])
            self.gguf_writer.add_token_types([gguf.TokenType.NORMAL] * n)
            self.gguf_writer.add_token_merges(["a b"])

    with torch.inference_mode():
        m = Stub(src, gguf.LlamaFileType.ALL_F32, out, eager=True, model_name=src.name)
        m.write()
    print(f"{out.name}: written from {src.name} by {cls.__name__}")


def window_reference():
    """phi3 with a sliding window of 8 on its 24-token reference rows."""
    d = OUT / "phi3"
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                                 sliding_window=8).eval()
    assert model.config.sliding_window == 8
    ids = load_file(d / "reference.safetensors")["input_ids"].long()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    save_file({"logits": logits.float().contiguous()}, d / "window.safetensors")
    print(f"phi3 window 8: logits {tuple(logits.shape)}")


def main():
    if "--window-only" in sys.argv[1:]:
        window_reference()
        return
    for i, (name, cfg) in enumerate(MODELS.items()):
        model, ids, labels = reference(name, cfg, 300 + i)
        if name == "phi3":
            lora(model, ids, labels, 400)
    convert(OUT / "phi3", OUT / "phi3.gguf")
    window_reference()
    import peft
    import transformers
    (OUT / "reference.json").write_text(json.dumps({
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "llama_cpp": os.path.basename(os.path.dirname(os.path.dirname(os.environ["LLAMA_CPP"]))),
    }, indent=1) + "\n")


if __name__ == "__main__":
    main()
