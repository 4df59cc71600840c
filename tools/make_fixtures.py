#!/usr/bin/env python3
"""Reference fixtures for kiln's model tests, written by PyTorch + transformers + PEFT.

Setup (once): pip install torch transformers peft safetensors
Run from the repository root:  python3 tools/make_fixtures.py

For each tiny random model (Llama with llama3 rope scaling, Qwen2 with q/k/v bias and tied
embeddings, Qwen3 with per-head q/k RMSNorm and an explicit head_dim) (and Mistral with a sliding window longer than the batch) it writes
tests/fixtures/<name>/:
  config.json, model.safetensors     the model, via save_pretrained (f32)
  reference.safetensors              input_ids, labels (int32; -100 = ignored), logits, loss,
                                     and for a PEFT LoRA (r=4, alpha=8, all linear layers, fixed
                                     random A and B) the adapter weights and their gradients:
                                     lora_A.<module>, lora_B.<module>, grad_A.<module>, grad_B.<module>;
                                     adamw_losses: the loss after each of 5 AdamW steps
                                     (lr 1e-2, weight decay 0.01) on the LoRA parameters
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
                                  sliding_window=64, tie_word_embeddings=False),
    "tiny-qwen2": Qwen2Config(**COMMON, rms_norm_eps=1e-6, rope_theta=1000000.0,
                              tie_word_embeddings=True),
    "tiny-qwen3": Qwen3Config(**COMMON, head_dim=16, rms_norm_eps=1e-6, rope_theta=1000000.0,
                              tie_word_embeddings=False),
}
R, ALPHA = 4, 8
STEPS = 5
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
        ids = torch.randint(0, cfg.vocab_size, (2, 11), generator=g)
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
        res = pm(input_ids=ids, labels=labels)
        res.loss.backward()
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
        save_file(tensors, os.path.join(out, "reference.safetensors"))
        with open(os.path.join(out, "reference.json"), "w") as f:
            json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                       "peft": peft.__version__, "lora_r": R, "lora_alpha": ALPHA,
                       "targets": TARGETS, "loss": res.loss.item()}, f, indent=1)
        print(name, "loss", res.loss.item())


if __name__ == "__main__":
    main()
