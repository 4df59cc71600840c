#!/usr/bin/env python3
"""One LoRA training step: kiln beside PyTorch + PEFT on the same model, shape and threads.

Setup: pip install torch transformers peft;  cargo build --release
Run:   python3 tools/bench_train.py MODEL_DIR [--seq-len 256] [--batch-size 1] [--threads 2]
Both sides: LoRA r=8 alpha=16 on all linear layers, AdamW, random tokens, median of timed
steps after one warm-up; peak RSS of each process. (tools/make_smollm2_shaped.py writes a
model with SmolLM2-135M's shapes.)
"""
import argparse
import json
import os
import resource
import subprocess
import time


def torch_step(a):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.model)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules="all-linear"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (a.batch_size, a.seq_len))
    times = []
    for i in range(a.steps + 1):
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i:
            times.append(time.perf_counter() - t)
    times.sort()
    step = times[len(times) // 2]
    dtype = str(next(model.parameters()).dtype)
    return step, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, dtype


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--kiln", default="target/release/kiln")
    a = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    k = json.loads(subprocess.check_output(
        [a.kiln, "bench", "train", "--json", "--model", a.model, "--seq-len", str(a.seq_len),
         "--batch-size", str(a.batch_size), "--steps", str(a.steps), "--lora-r", "8"], env=env))
    step, rss, dtype = torch_step(a)
    tok = a.batch_size * a.seq_len
    print(f"model={a.model} batch={a.batch_size} seq={a.seq_len} threads={a.threads} torch dtype={dtype}")
    print("| | step s | tokens/s | peak RSS MB |")
    print("|---|---|---|---|")
    print(f"| kiln (cpu) | {k['step_s']:.2f} | {k['tokens_per_s']:.0f} | {k['peak_rss_mb']:.0f} |")
    print(f"| PyTorch+PEFT | {step:.2f} | {tok / step:.0f} | {rss:.0f} |")
    print(f"| kiln / PyTorch | | {k['tokens_per_s'] / (tok / step):.2f}x | {k['peak_rss_mb'] / rss:.2f}x |")


if __name__ == "__main__":
    main()
