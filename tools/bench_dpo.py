#!/usr/bin/env python3
"""DPO training throughput and peak memory: kiln beside TRL's DPOTrainer (PyTorch +
transformers + PEFT), same f32 model, data, LoRA, batch and thread count, in one run.

Setup: pip install torch transformers peft trl gguf;  cargo build --release
Run:   python3 tools/bench_dpo.py [--model HF_DIR] [--steps 6] [--batch-size 8] [--threads 2]
Default model: SmolLM2-135M-Instruct exported to f32 by `kiln export` (as tools/bench_train.py);
data: data/demo_prefs.jsonl as conversational rows, so both sides render the model's chat
template. LoRA r=8 alpha 16 on all linear layers, beta 0.1, sigmoid loss, reference = base with
adapters off computed at every step (TRL's default; kiln without --precompute-ref). Each side
runs in its own process (peak RSS is per process); the step time is the median over the steps
after the first. Pairs/s is the comparable rate (kiln lays a pair's prompt out once, so it
runs fewer tokens for the same pairs).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import ROOT, default_gguf, f32_dir  # noqa: E402

DATA = os.path.join(ROOT, "data/demo_prefs.jsonl")


def trl_run(a):
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    torch.set_num_threads(a.threads)
    rows = [json.loads(l) for l in open(DATA)]
    conv = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    args = trl.DPOConfig(output_dir="/tmp/kiln-bench-dpo", beta=0.1, per_device_train_batch_size=a.batch_size,
                         max_steps=a.steps, learning_rate=5e-4, report_to=[], use_cpu=True, bf16=False,
                         fp16=False, logging_steps=1, save_strategy="no", dataloader_num_workers=0)
    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.t = time.perf_counter()

        def on_step_end(self, *_, **__):
            times.append(time.perf_counter() - self.t)

    tr = trl.DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(conv), processing_class=tok,
                        peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"),
                        callbacks=[Timer()])
    tr.train()
    losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
    step = sorted(times[1:])[len(times[1:]) // 2]
    print(json.dumps({"step_s": step, "pairs_per_s": a.batch_size / step, "losses": losses,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "trl": trl.__version__, "torch": torch.__version__}))


def kiln_run(a, model, env):
    out = os.path.join(ROOT, "target/bench-dpo")
    cmd = [a.kiln, "train", "--method", "dpo", "--model", model, "--data", DATA, "--out", out, "--overwrite", "--eval-split", "0",
           "--max-steps", str(a.steps), "--batch-size", str(a.batch_size), "--learning-rate", "5e-4"]
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    rss = int(p.stderr.strip().splitlines()[-1]) / 1024
    m = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    tr = [v for v in m if v["kind"] == "train"]
    el = [v["elapsed_s"] for v in tr]
    steps = sorted(b - a_ for a_, b in zip(el, el[1:]))
    step = steps[len(steps) // 2]
    return {"step_s": step, "pairs_per_s": a.batch_size / step, "losses": [v["loss"] for v in tr],
            "peak_rss_mb": rss, "wall_s": wall}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--gguf")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target/release/kiln"))
    ap.add_argument("--trl-only", action="store_true")
    a = ap.parse_args()
    if a.trl_only:
        return trl_run(a)
    model = a.model or f32_dir(a.kiln, a.gguf or default_gguf())
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    k = kiln_run(a, model, env)
    out = subprocess.check_output([sys.executable, __file__, "--trl-only", "--model", model, "--steps", str(a.steps),
                                   "--batch-size", str(a.batch_size), "--threads", str(a.threads)])
    t = json.loads(out.decode().strip().splitlines()[-1])
    print(f"model={model} batch={a.batch_size} pairs threads={a.threads} trl={t['trl']} torch={t['torch']}")
    print(f"kiln losses {[round(x, 4) for x in k['losses']]}")
    print(f"TRL  losses {[round(x, 4) for x in t['losses']]}")
    print("| run | kiln pairs/s | TRL pairs/s | speed ratio | kiln peak RSS MB | TRL peak RSS MB | memory ratio |")
    print("|---|---|---|---|---|---|---|")
    print(f"| DPO, LoRA r=8 all-linear, f32 base | {k['pairs_per_s']:.2f} | {t['pairs_per_s']:.2f} "
          f"| {k['pairs_per_s'] / t['pairs_per_s']:.2f}x | {k['peak_rss_mb']:.0f} | {t['peak_rss_mb']:.0f} "
          f"| {k['peak_rss_mb'] / t['peak_rss_mb']:.2f}x |")


if __name__ == "__main__":
    main()
