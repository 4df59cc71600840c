#!/usr/bin/env python3
"""Reference fixtures for kiln's model tests, written by PyTorch + transformers + PEFT.

Setup (once): pip install torch transformers peft safetensors
Run from the repository root:  python3 tools/make_fixtures.py

For each tiny random model (Llama with llama3 rope scaling, Qwen2 with q/k/v bias and tied
embeddings, Qwen3 with per-head q/k RMSNorm and an explicit head_dim, Mistral with a sliding
window of 8 tokens that its 24-token rows overrun) it writes tests/fixtures/<name>/:
  config.json, model.safetensors     the model, via save_pretrained (f32)
  reference.safetensors              input_ids, labels (int32; -100 = ignored), logits, loss,
                                     and for a PEFT LoRA (r=4, alpha=8, all linear layers, fixed
                                     random A and B) the adapter weights and their gradients:
                                     lora_A.<module>, lora_B.<module>, grad_A.<module>, grad_B.<module>;
                                     adamw_losses: the loss after each of 5 AdamW steps
                                     (lr 1e-2, weight decay 0.01) on the LoRA parameters.
                                     Mistral: everything above is computed with the sliding
                                     window switched off (the full causal mask), and beside it
                                     sliding_logits, sliding_loss with the window on (eager
                                     attention, so transformers applies it): the two differ from
                                     position 8 on, which is what a model that ignored the
                                     window would get wrong.
  full.safetensors                   (not Mistral) full fine-tuning: the loss of the base model
                                     without adapters and full_grad.<parameter> for every one of
                                     its parameters
                                     (model.named_parameters(); a tied LM head has no entry of
                                     its own, its gradient is part of the embedding's)
  rslora.safetensors                 (tiny-llama) a PEFT LoRA with use_rslora=True (r=8,
                                     alpha=16: scale alpha/sqrt(r) = 5.66, where alpha/r would be
                                     2): rslora_A.<module>, rslora_B.<module>, grad_A.<module>,
                                     grad_B.<module>, loss
  reference.json                     versions and LoRA settings
The fixtures are committed so the Rust tests need no Python.
"""
import json
import os

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config
import transformers
import peft
from peft import LoraConfig, get_peft_model

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              # Larger than the 0.02 default so logits span a realistic range (an LM head of
              # N(0, 0.02) weights cannot express a confident prediction, so nothing could overfit).
              initializer_range=0.25)

MODELS = {
    "tiny-llama": LlamaConfig(**COMMON, rms_norm_eps=1e-5, rope_theta=10000.0,
                              rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 16},
                              tie_word_embeddings=False),
    "tiny-mistral": MistralConfig(**COMMON, rms_norm_eps=1e-5, rope_theta=10000.0,
                                  sliding_window=8, tie_word_embeddings=False),
    "tiny-qwen2": Qwen2Config(**COMMON, rms_norm_eps=1e-6, rope_theta=1000000.0,
                              tie_word_embeddings=True),
    "tiny-qwen3": Qwen3Config(**COMMON, head_dim=16, rms_norm_eps=1e-6, rope_theta=1000000.0,
                              tie_word_embeddings=False),
}
R, ALPHA = 4, 8
RS_R, RS_ALPHA = 8, 16
RS_MODELS = ["tiny-llama"]
STEPS = 5
# Tokens per row: more than twice the Mistral window, so positions 8..23 each lose some keys.
SEQ = {"tiny-mistral": 24}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    for name, cfg in MODELS.items():
        torch.manual_seed(1234)
        cfg._attn_implementation = "eager"
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
        # Random norm weights (default init is all ones, which would hide a missing multiply).
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                if n.endswith("bias"):
                    p.copy_(0.1 * torch.randn_like(p))
        out = os.path.join(ROOT, name)
        os.makedirs(out, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)

        g = torch.Generator().manual_seed(7)
        ids = torch.randint(0, cfg.vocab_size, (2, SEQ.get(name, 11)), generator=g)
        labels = ids.clone()
        labels[0, :3] = -100  # prompt tokens masked, as completion-only training does
        labels[1, 5] = -100

        lcfg = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS,
                          init_lora_weights=False)
        pm = get_peft_model(model, lcfg)
        lora = {}
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_" in n:
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
        pm.train()
        extra = {}
        window = getattr(cfg, "sliding_window", None)
        if window is not None:
            # transformers reads config.sliding_window on every forward: the windowed run, then
            # the reference proper with the window off (the full causal mask kiln computes).
            with torch.no_grad():
                win = pm(input_ids=ids, labels=labels)
            extra = {"sliding_logits": win.logits.detach().contiguous(), "sliding_loss": win.loss.reshape(1)}
            pm.base_model.model.config.sliding_window = None
        res = pm(input_ids=ids, labels=labels)
        res.loss.backward()
        if extra:
            check_window(extra["sliding_logits"], res.logits.detach(), window)
        tensors = {
            "input_ids": ids.to(torch.int32),
            "labels": labels.to(torch.int32),
            "logits": res.logits.detach().contiguous(),
            "loss": res.loss.detach().reshape(1),
        }
        for n, p in pm.named_parameters():
            if "lora_" not in n:
                continue
            # base_model.model.<module>.lora_A.default.weight
            module = n.split("base_model.model.", 1)[1].split(".lora_")[0]
            which = "A" if ".lora_A." in n else "B"
            tensors[f"lora_{which}.{module}"] = p.detach().clone()
            tensors[f"grad_{which}.{module}"] = p.grad.detach().clone()
        # The first losses of a short AdamW run from here (golden training trajectory).
        opt = torch.optim.AdamW([p for n, p in pm.named_parameters() if p.requires_grad],
                                lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
        losses = []
        for _ in range(STEPS):
            opt.step()
            opt.zero_grad()
            res2 = pm(input_ids=ids, labels=labels)
            res2.loss.backward()
            losses.append(res2.loss.item())
        tensors["adamw_losses"] = torch.tensor(losses, dtype=torch.float32)
        tensors.update(extra)
        save_file(tensors, os.path.join(out, "reference.safetensors"))
        meta = {"torch": torch.__version__, "transformers": transformers.__version__,
                "peft": peft.__version__, "lora_r": R, "lora_alpha": ALPHA,
                "targets": TARGETS, "loss": res.loss.item()}
        if window is None:
            save_file(full_grads(out, ids, labels), os.path.join(out, "full.safetensors"))
        if name in RS_MODELS:
            save_file(rslora(out, ids, labels), os.path.join(out, "rslora.safetensors"))
            meta.update(rslora_r=RS_R, rslora_alpha=RS_ALPHA)
        with open(os.path.join(out, "reference.json"), "w") as f:
            json.dump(meta, f, indent=1)
        print(name, "loss", res.loss.item())


def reload(out):
    """The saved base model, read back as a fine-tuning run would start from it."""
    return AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")


def full_grads(out, ids, labels):
    """Gradients of the loss w.r.t. every base parameter (full fine-tuning, no adapters)."""
    model = reload(out)
    model.train()
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    grads = {f"full_grad.{n}": p.grad.detach().clone() for n, p in model.named_parameters()}
    grads["loss"] = loss.detach().reshape(1)
    tied = model.config.tie_word_embeddings
    assert ("full_grad.lm_head.weight" in grads) != tied, "tied head listed, or untied head missing"
    return grads


def rslora(out, ids, labels):
    """A LoRA with rsLoRA scaling (alpha/sqrt(r)) and fixed random A and B, and its gradients."""
    g = torch.Generator().manual_seed(21)
    lcfg = LoraConfig(r=RS_R, lora_alpha=RS_ALPHA, lora_dropout=0.0, target_modules=TARGETS,
                      init_lora_weights=False, use_rslora=True)
    pm = get_peft_model(reload(out), lcfg)
    scales = {s for m in pm.modules() if isinstance(getattr(m, "scaling", None), dict)
              for s in m.scaling.values()}
    assert scales == {RS_ALPHA / RS_R ** 0.5}, scales
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    pm.train()
    res = pm(input_ids=ids, labels=labels)
    res.loss.backward()
    tensors = {"loss": res.loss.detach().reshape(1)}
    for n, p in pm.named_parameters():
        if "lora_" not in n:
            continue
        module = n.split("base_model.model.", 1)[1].split(".lora_")[0]
        which = "A" if ".lora_A." in n else "B"
        tensors[f"rslora_{which}.{module}"] = p.detach().clone()
        tensors[f"grad_{which}.{module}"] = p.grad.detach().clone()
    return tensors


def check_window(windowed, full, window):
    """The window must change the logits from position `window` on, and only there."""
    first = (windowed - full).abs().amax(dim=(0, 2))
    assert first[:window].max() == 0, f"logits differ before the window is full: {first[:window]}"
    rel = ((windowed - full)[:, window:].norm() / full[:, window:].norm()).item()
    assert rel > 1e-2, f"the window changes the logits by only {rel:e}"
    print(f"sliding window {window}: logits from position {window} on differ by {rel:.3e} (relative)")


if __name__ == "__main__":
    main()
