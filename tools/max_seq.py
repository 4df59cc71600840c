"""The largest sequence length a LoRA training step fits in a fixed GPU memory budget, for kiln
(CUDA backend, through `kiln bench train`) and for transformers + PEFT (bf16, SDPA), batch 1, on
the same model and card. Prints one JSON line per try and a summary line last.

    python3 tools/max_seq.py KILN_BIN MODEL_DIR [--budget-gib 8] [--max 32768]
"""
import argparse, json, subprocess, sys

ap = argparse.ArgumentParser()
ap.add_argument("kiln")
ap.add_argument("model")
ap.add_argument("--budget-gib", type=float, default=8.0)
ap.add_argument("--max", type=int, default=32768)
a = ap.parse_args()
budget_mb = a.budget_gib * 1024


def kiln(seq):
    o = subprocess.run([a.kiln, "bench", "train", "--backend", "cuda", "--model", a.model, "--batch-size", "1",
                        "--seq-len", str(seq), "--steps", "1", "--json"], capture_output=True, text=True, timeout=600)
    if o.returncode != 0:
        return None, o.stderr.strip().splitlines()[-1:] or ["failed"]
    row = json.loads(o.stdout.strip().splitlines()[-1])
    return row.get("peak_gpu_mb"), row


def torch_peft(seq):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.cuda.empty_cache()
    m = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
    m = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, m.config.vocab_size, (1, seq), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    try:
        loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20, "ok"
    except torch.cuda.OutOfMemoryError as e:
        return None, f"out of memory: {e}".splitlines()[0]
    finally:
        del m, opt
        torch.cuda.empty_cache()


best = {"kiln": 0, "torch+peft": 0}
for name, run in (("kiln", kiln), ("torch+peft", torch_peft)):
    seq = 1024
    while seq <= a.max:
        try:
            peak, info = run(seq)
        except Exception as e:  # a failed try ends the search for this stack, with the reason
            peak, info = None, str(e).splitlines()[:1]
        fits = peak is not None and peak <= budget_mb
        print(json.dumps({"stack": name, "seq_len": seq, "peak_gpu_mb": peak, "fits": fits,
                          "info": info if not isinstance(info, dict) else "ok"}), flush=True)
        if not fits:
            break
        best[name] = seq
        seq *= 2
print(json.dumps({"budget_gib": a.budget_gib, "largest_seq_len_in_budget": best}))
sys.exit(0 if best["kiln"] > 0 else 1)
