#!/usr/bin/env python3
"""Preference-loss fixtures for kiln's DPO/ORPO tests, computed by TRL.

Setup (once): pip install torch transformers peft trl safetensors
Run from the repository root:  python3 tools/make_pref_fixtures.py

On the committed tiny random Llama (tests/fixtures/tiny-llama) with a PEFT LoRA (r=4, alpha=8,
all linear layers, fixed random A and B so the policy differs from the reference), for three
preference pairs given as token ids (one pair's answers share their first two tokens), it writes
tests/fixtures/preference/:
  trl.safetensors   prompt/chosen/rejected ids of each pair (int32), the LoRA weights
                    lora_{A,B}.<module>, and per case the loss and the LoRA gradients
                    <case>.loss, <case>.grad_{A,B}.<module>
  trl.json          versions, settings, and per case the TRL metrics (rewards, accuracy)

Cases:
  dpo_sigmoid   TRL DPOTrainer, loss_type "sigmoid", beta 0.1 (reference: adapters disabled)
  dpo_ipo       TRL DPOTrainer, loss_type "ipo", beta 0.1
  dpo_smooth    conservative DPO, label smoothing 0.2: TRL 1.16's "sigmoid" no longer takes
                label smoothing, so the loss is written out here from the same log-probs
                (−(1−ε)·logσ(βδ) − ε·logσ(−βδ), the form TRL's sigmoid loss had before)
  orpo          TRL ORPOTrainer's odds_ratio_loss and get_batch_logps (beta 0.1) plus the NLL
                of the chosen answers' tokens. TRL 1.16 takes that NLL over prompt and answer;
                kiln follows the ORPO paper (the answer only), so the fixture does too.
The fixtures are committed so the Rust tests need no Python.
"""
import json
import os
import types

import peft
import torch
import torch.nn.functional as F
import transformers
import trl
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
R, ALPHA, BETA, SMOOTH = 4, 8, 0.1, 0.2
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PAIRS = [
    # prompt ids, chosen ids, rejected ids
    ([1, 17, 33, 5, 60], [40, 41, 2], [70, 2]),
    ([1, 9, 12], [50, 51, 52, 53, 2], [50, 51, 80, 2]),  # answers share two tokens
    ([1, 88, 3, 4, 23, 61, 7], [30, 2], [31, 32, 33, 2]),
]


def base():
    return AutoModelForCausalLM.from_pretrained(os.path.join(ROOT, "tiny-llama"), dtype=torch.float32,
                                                attn_implementation="eager")


def lora_config():
    return LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, init_lora_weights=False)


def randomize(pm):
    """The same fixed random A and B in every case (module order is fixed)."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return pm


def policy():
    return randomize(get_peft_model(base(), lora_config()))


def lora_tensors(pm, prefix, grads):
    out = {}
    for n, p in pm.named_parameters():
        if "lora_" not in n:
            continue
        module = n.split("base_model.model.", 1)[1].split(".lora_")[0]
        which = "A" if ".lora_A." in n else "B"
        t = p.grad if grads else p
        out[f"{prefix}{which}.{module}"] = t.detach().clone().contiguous()
    return out


def batch(pad=0):
    ex = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in PAIRS]
    return trl.trainer.dpo_trainer.DataCollatorForPreference(pad_token_id=pad)(ex)


def dpo_trainer(loss_type):
    """A DPOTrainer that adds the LoRA itself (given a PeftModel, TRL 1.16 would copy its adapter
    as the reference; given a base model and a peft_config, the reference is the base with
    adapters disabled, kiln's semantics)."""
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(ROOT, "tokenizer", "tokenizer.json"))
    tok.pad_token = tok.convert_ids_to_tokens(0)
    tok.eos_token = tok.convert_ids_to_tokens(2)
    from datasets import Dataset
    ds = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])
    args = trl.DPOConfig(output_dir="/tmp/kiln-trl-fixture", beta=BETA, loss_type=loss_type, report_to=[],
                         per_device_train_batch_size=len(PAIRS), use_cpu=True, bf16=False, fp16=False)
    tr = trl.DPOTrainer(model=base(), args=args, train_dataset=ds, processing_class=tok, peft_config=lora_config())
    randomize(tr.model)
    return tr


def seq_logps(model, b, average=False):
    """Per-sequence answer log-probs of the concatenated batch (chosen rows, then rejected)."""
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
    labels = b["input_ids"][:, 1:]
    mask = b["completion_mask"][:, 1:].float()
    lp = torch.gather(F.log_softmax(logits.float(), -1), 2, labels.unsqueeze(-1)).squeeze(-1)
    s = (lp * mask).sum(-1)
    return (s / mask.sum(-1)) if average else s, lp, mask


def main():
    torch.manual_seed(0)
    out_dir = os.path.join(ROOT, "preference")
    os.makedirs(out_dir, exist_ok=True)
    tensors, meta = {}, {"versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                      "peft": peft.__version__, "trl": trl.__version__},
                         "lora_r": R, "lora_alpha": ALPHA, "beta": BETA, "label_smoothing": SMOOTH, "cases": {}}
    for i, (p, c, r) in enumerate(PAIRS):
        tensors[f"pair{i}.prompt"] = torch.tensor(p, dtype=torch.int32)
        tensors[f"pair{i}.chosen"] = torch.tensor(c, dtype=torch.int32)
        tensors[f"pair{i}.rejected"] = torch.tensor(r, dtype=torch.int32)
    b = batch()
    for case, loss_type in [("dpo_sigmoid", "sigmoid"), ("dpo_ipo", "ipo")]:
        tr = dpo_trainer(loss_type)
        if case == "dpo_sigmoid":
            tensors.update(lora_tensors(tr.model, "lora_", False))
        tr.model.train()
        loss = tr._compute_loss(tr.model, dict(b), False)
        loss.backward()
        tensors[f"{case}.loss"] = loss.detach().reshape(1).double()
        tensors.update(lora_tensors(tr.model, f"{case}.grad_", True))
        m = {k: v[-1] for k, v in tr._metrics["train"].items() if k.startswith("rewards/")}
        meta["cases"][case] = {"loss": loss.item(), **m}
    # Conservative DPO from the same log-probs (reference: adapters disabled).
    pm = policy()
    pm.train()
    pol, _, _ = seq_logps(pm, b)
    with torch.no_grad(), pm.disable_adapter():
        ref, _, _ = seq_logps(pm, b)
    n = len(PAIRS)
    d = (pol[:n] - ref[:n]) - (pol[n:] - ref[n:])
    loss = (-(1 - SMOOTH) * F.logsigmoid(BETA * d) - SMOOTH * F.logsigmoid(-BETA * d)).mean()
    loss.backward()
    tensors["dpo_smooth.loss"] = loss.detach().reshape(1).double()
    tensors.update(lora_tensors(pm, "dpo_smooth.grad_", True))
    meta["cases"]["dpo_smooth"] = {"loss": loss.item()}
    # ORPO: TRL's odds-ratio term on average log-probs, plus the chosen answers' NLL.
    from trl.experimental.orpo import ORPOTrainer
    pm = policy()
    pm.train()
    logits = pm(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    labels = torch.where(b["completion_mask"] == 1, b["input_ids"], -100)
    avg = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    fake = types.SimpleNamespace(beta=BETA, accelerator=types.SimpleNamespace(device="cpu"))
    losses, cr, rr, _, _ = ORPOTrainer.odds_ratio_loss(fake, avg[:n], avg[n:])
    nll = F.cross_entropy(logits[:n, :-1].reshape(-1, logits.shape[-1]), labels[:n, 1:].reshape(-1))
    loss = nll - losses.mean()
    loss.backward()
    tensors["orpo.loss"] = loss.detach().reshape(1).double()
    tensors.update(lora_tensors(pm, "orpo.grad_", True))
    meta["cases"]["orpo"] = {"loss": loss.item(), "rewards/chosen": cr.mean().item(),
                             "rewards/rejected": rr.mean().item(),
                             "rewards/accuracies": (cr > rr).float().mean().item()}
    save_file(tensors, os.path.join(out_dir, "trl.safetensors"))
    with open(os.path.join(out_dir, "trl.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(meta["cases"], indent=1))


if __name__ == "__main__":
    main()
