#!/usr/bin/env python3
"""Checks that a LoRA adapter written by `kiln train` loads in PEFT and gives kiln's numbers.

1. Writes a small random Llama with transformers (vocab of the fixture BPE tokenizer) and the
   tokenizer files beside it, and a small chat dataset.
2. `kiln train` fine-tunes a LoRA adapter on it (all linear layers, r=8) → OUT/adapter/.
3. `kiln generate --raw --adapter OUT/adapter --json` decodes greedily and reports each new
   token's log-probability.
4. transformers + `PeftModel.from_pretrained(model, OUT/adapter)` scores the same tokens; the
   script prints the largest log-probability difference and whether the greedy tokens agree,
   and checks that the adapter changed the model (it is not a no-op load).
5. `kiln export --format merged` writes the adapter merged into the weights; transformers loads
   that folder (`AutoModelForCausalLM` + `AutoTokenizer`) and its logits are compared with the
   PEFT model's.

    python3 tools/check_peft_adapter.py [--kiln target/release/kiln] [--steps 30]
        [--family llama|gemma2|gemma3|phi3|phi4-mini]

--family picks the random model (tools/kiln_tiny.py): Gemma 2/3 and Phi-3/Phi-4-mini check
sliding windows, soft-caps, PEFT's fused qkv_proj/gate_up_proj LoRA and partial rotary.
Needs torch, transformers, peft (pip). Exits non-zero when the agreement is worse than 1e-3.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target/release/kiln"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--family", default="llama", choices=["llama", "gemma2", "gemma3", "phi3", "phi4-mini"])
    ap.add_argument("--train-embeddings", action="store_true",
                    help="also train embed_tokens and lm_head (saved as PEFT modules_to_save)")
    a = ap.parse_args()
    # After the arguments: they parse (and --help works) without torch, transformers or peft.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from kiln_tiny import tiny_model
    work = tempfile.mkdtemp(prefix="kiln-peft-")
    model_dir = os.path.join(work, "model")
    tiny_model(model_dir, a.family)
    data = os.path.join(work, "data.jsonl")
    with open(data, "w") as fh:
        for i in range(60):
            fh.write(json.dumps({"messages": [{"role": "user", "content": f"colour of item {i}?"},
                                              {"role": "assistant", "content": f"item {i} is blue"}]}) + "\n")
    out = os.path.join(work, "run")
    subprocess.run([a.kiln, "train", "--model", model_dir, "--data", data, "--out", out,
                    "--max-steps", str(a.steps), "--learning-rate", "3e-3", "--batch-size", "4",
                    "--train-embeddings", "true" if a.train_embeddings else "false"],
                   check=True, stdout=subprocess.DEVNULL)
    adapter = os.path.join(out, "adapter")
    prompt = "colour of item 7?"
    res = subprocess.run([a.kiln, "generate", "--raw", "--model", model_dir, "--adapter", adapter,
                          "--prompt", prompt, "--max-new-tokens", "16", "--json"],
                         check=True, capture_output=True, text=True)
    k = json.loads(res.stdout)
    ids = torch.tensor([k["prompt_ids"] + k["tokens"]])
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        base_logits = base(ids).logits[0].clone()
    pm = PeftModel.from_pretrained(base, adapter)
    pm.eval()
    with torch.no_grad():
        logits = pm(ids).logits[0]
    n = len(k["prompt_ids"])
    lp = torch.log_softmax(logits.double(), -1)
    ref = [lp[n - 1 + i, t].item() for i, t in enumerate(k["tokens"])]
    greedy = [int(logits[n - 1 + i].argmax()) for i in range(len(k["tokens"]))]
    diff = max(abs(x - y) for x, y in zip(ref, k["logprobs"]))
    adapter_effect = (logits - base_logits).abs().max().item()
    merged_dir = os.path.join(work, "merged")
    subprocess.run([a.kiln, "export", "--model", model_dir, "--adapter", adapter, "--format", "merged",
                    "--out", merged_dir], check=True, stdout=subprocess.DEVNULL)
    from transformers import AutoTokenizer
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(merged_dir)
    with torch.no_grad():
        merged_logits = merged(ids).logits[0]
    merged_diff = (merged_logits - logits).abs().max().item()
    same_tokens = tok(prompt, add_special_tokens=False)["input_ids"] == [i for i in k["prompt_ids"] if i != 1]
    report = {"family": a.family, "tokens": len(k["tokens"]), "max_abs_logprob_diff": diff,
              "greedy_tokens_agree": greedy == k["tokens"], "adapter_effect_max_logit": adapter_effect,
              "merged_vs_peft_max_logit_diff": merged_diff, "merged_tokenizer_same_ids": same_tokens,
              "peft_loaded_modules": sorted({n.split(".")[-2] for n, _ in pm.named_modules() if n.endswith("lora_A")})}
    print(json.dumps(report, indent=1))
    if not a.keep:
        shutil.rmtree(work)
    ok = diff < 1e-3 and greedy == k["tokens"] and adapter_effect > 1e-2 and merged_diff < 1e-3 and same_tokens
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
