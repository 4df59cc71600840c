#!/usr/bin/env python3
"""Bottleneck-adapter fixtures for kiln's `adapter` method, computed by AdapterHub's `adapters`.

kiln's bottleneck adapters (runtime/kiln/src/adapters/bottleneck.rs) are AdapterHub's
"double_seq_bn" (Houlsby et al. 2019): after the attention output projection and after the MLP
down projection of every block, before the residual add, h -> h + up(silu(down(h))), with
down [size, hidden] + bias, up [hidden, size] + bias, scaling 1, no layer norm, no gating, no
dropout. In `adapters` that is DoubleSeqBnConfig(reduction_factor=hidden/size) ("swish" is SiLU;
original_ln_before=False, residual_before_ln=True: the adapter's residual is the sub-layer
output; original_ln_after=True without a layer norm: then the block's residual is added).

`adapters` pins an older transformers than the other fixture scripts, so it runs in its own
virtual environment (the system torch is reused):
  python3 -m venv --system-site-packages /tmp/venv-adapters
  /tmp/venv-adapters/bin/pip install adapters safetensors
Run from the repository root:  /tmp/venv-adapters/bin/python tools/make_adapter_fixtures.py

On the committed tiny random Llama (tests/fixtures/tiny-llama, rebuilt from its config.json and
model.safetensors: transformers 4.x does not read the rope_parameters key that 5.x writes, so
the rope settings are passed as 4.x spells them), with the input_ids and labels of its
reference.safetensors and adapters of size 4 whose eight tensors per block are all set to fixed
random values (the default init zeroes `up`, which would hide every path through `down`), it
writes tests/fixtures/tiny-llama/bottleneck.safetensors:
  input_ids, labels       as in reference.safetensors
  base_loss               the loss with the adapters off (checks the model was rebuilt right)
  loss, logits            with the adapters on
  bn.<name>, grad.<name>  each adapter tensor and the gradient of the loss w.r.t. it, under
                          kiln's names: model.layers.<i>.{attn_adapter,mlp_adapter}.
                          {down,up}.{weight,bias}
and bottleneck.json (versions and settings). The Rust tests need no Python.
"""
import json
import os

import adapters
import torch
import transformers
from adapters import DoubleSeqBnConfig
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tiny-llama")
SIZE = 4
NAME = "bn"
# AdapterHub module → kiln site.
SITES = {"attention_adapters": "attn_adapter", "output_adapters": "mlp_adapter"}
PARTS = {"adapter_down.0.weight": "down.weight", "adapter_down.0.bias": "down.bias",
         "adapter_up.weight": "up.weight", "adapter_up.bias": "up.bias"}


def base():
    with open(os.path.join(ROOT, "config.json")) as f:
        c = json.load(f)
    rope = dict(c["rope_parameters"])
    theta = rope.pop("rope_theta")
    assert rope["rope_type"] == "llama3", rope
    cfg = LlamaConfig(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                      intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"],
                      num_attention_heads=c["num_attention_heads"],
                      num_key_value_heads=c["num_key_value_heads"],
                      max_position_embeddings=c["max_position_embeddings"], rms_norm_eps=c["rms_norm_eps"],
                      rope_theta=theta, rope_scaling=rope, tie_word_embeddings=c["tie_word_embeddings"],
                      attn_implementation="eager")
    model = LlamaForCausalLM(cfg).to(torch.float32)
    missing, unexpected = model.load_state_dict(load_file(os.path.join(ROOT, "model.safetensors")), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return model


def kiln_name(n):
    # model.layers.0.attention_adapters.adapters.bn.adapter_down.0.weight
    layer = n.split("model.layers.", 1)[1].split(".", 1)[0]
    site = next(v for k, v in SITES.items() if f".{k}." in n)
    part = n.split(f".adapters.{NAME}.", 1)[1]
    return f"model.layers.{layer}.{site}.{PARTS[part]}"


def main():
    torch.use_deterministic_algorithms(True)
    ref = load_file(os.path.join(ROOT, "reference.safetensors"))
    ids, labels = ref["input_ids"].long(), ref["labels"].long()
    model = base()
    model.train()
    with torch.no_grad():
        base_loss = model(input_ids=ids, labels=labels).loss

    adapters.init(model)
    hidden = model.config.hidden_size
    model.add_adapter(NAME, config=DoubleSeqBnConfig(reduction_factor=hidden / SIZE))
    model.train_adapter(NAME)
    g = torch.Generator().manual_seed(31)
    named = [(n, p) for n, p in model.named_parameters() if f".adapters.{NAME}." in n]
    assert len(named) == 4 * 2 * model.config.num_hidden_layers, [n for n, _ in named]
    with torch.no_grad():
        for n, p in named:
            p.copy_((0.3 if n.endswith("weight") else 0.1) * torch.randn(p.shape, generator=g))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == sorted(n for n, _ in named), trainable
    model.train()
    res = model(input_ids=ids, labels=labels)
    res.loss.backward()

    tensors = {"input_ids": ref["input_ids"], "labels": ref["labels"], "base_loss": base_loss.reshape(1),
               "loss": res.loss.detach().reshape(1), "logits": res.logits.detach().contiguous()}
    for n, p in named:
        k = kiln_name(n)
        want = {"down.weight": (SIZE, hidden), "down.bias": (SIZE,), "up.weight": (hidden, SIZE),
                "up.bias": (hidden,)}[k.split("_adapter.", 1)[1]]
        assert tuple(p.shape) == want, (n, p.shape)
        tensors[f"bn.{k}"] = p.detach().clone()
        tensors[f"grad.{k}"] = p.grad.detach().clone()
    save_file(tensors, os.path.join(ROOT, "bottleneck.safetensors"))
    with open(os.path.join(ROOT, "bottleneck.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                   "adapters": adapters.__version__, "config": "DoubleSeqBnConfig",
                   "reduction_factor": hidden / SIZE, "adapter_size": SIZE,
                   "base_loss": base_loss.item(), "loss": res.loss.item()}, f, indent=1)
    print("base loss", base_loss.item(), "adapter loss", res.loss.item())


if __name__ == "__main__":
    main()
