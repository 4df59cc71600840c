#!/usr/bin/env bash
# The prepared check for a machine with a GPU and no Rust toolchain (the device tool's
# H100/H200, or a user's box): runs from a release binary built elsewhere, in sections, each
# with its own time limit, writing each section's log to OUT as soon as it finishes and a short
# table last. Nothing here needs the network.
#
#   tools/gpu-check.sh [--quick] [--smoke] [--bin PATH] OUT
#
# --smoke runs every section at tiny shapes (to try the script itself on a CPU Vulkan driver).
#
# Sections: info (backends seen), selftest cpu, cuda (again with the wgmma GEMM, v5) and wgpu
# (the op-parity suite on the GPU: the CUDA kernels, and the WGSL ones through Vulkan), CUDA kernel benches (every GEMM variant,
# the fused LoRA against the plain GEMMs, memory-bound ops; TFLOP/s against the datasheet and
# cuBLAS, GB/s against a measured copy), GEMM benches (kiln's wgpu GEMM at the models' shapes, the CPU beside it, and torch's
# bf16/f32 matmul — cuBLAS — on the same card when PyTorch is there), a LoRA training-step bench
# on a SmolLM2-shaped random model (written by tools/make_smollm2_shaped.py when transformers is
# there), and, without --quick, the largest sequence a LoRA step fits in 8 GiB for kiln and for
# transformers + PEFT (tools/max_seq.py) and a DPO step bench. Also: `kiln bench ops` (attention
# TFLOP/s beside torch's SDPA, dequant/norm/CE GB/s) on cuda and wgpu, wgpu's f16 GEMMs, and
# decoding with a trained adapter on cuda and wgpu against the CPU's tokens.
#
# CUDA kernels come as PTX compiled ahead here (`kiln kernels build --out gpu-carry/ptx`): the
# GPU machine needs only the driver (a CUDA 13 driver loads CUDA 12.9 PTX). Where gpu-carry/ptx
# is missing, kiln compiles with the machine's NVRTC if it has one.
#
# wgpu on an NVIDIA card needs the Vulkan loader and NVIDIA's ICD: where the machine has no
# libvulkan.so.1, the loader carried in gpu-carry/vulkan/ (Debian's libvulkan1, fetched by
# tools/gpu-carry.sh) is unpacked under OUT; where no ICD file names NVIDIA's driver, one is
# written for the driver's libGLX_nvidia.so.0 when that library is there. Without either, the
# wgpu sections report "no adapter" and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."

quick=0
smoke=0
bin=gpu-carry/kiln
while [[ $# -gt 1 ]]; do
  case $1 in
    --quick) quick=1; shift ;;
    --smoke) smoke=1; quick=1; shift ;;
    --bin) bin=$2; shift 2 ;;
    *) break ;;
  esac
done
out=${1:?usage: tools/gpu-check.sh [--quick] [--bin PATH] OUT}
mkdir -p "$out"
[[ -x $bin ]] || bin=target/release/kiln
[[ -x $bin ]] || { echo "no kiln binary (gpu-carry/kiln or target/release/kiln; --bin PATH)"; exit 2; }
summary=()

if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1 ' && compgen -G 'gpu-carry/vulkan/*.deb' >/dev/null; then
  mkdir -p "$out/vulkan"
  for f in gpu-carry/vulkan/*.deb; do dpkg -x "$f" "$out/vulkan"; done
  lib=$(find "$out/vulkan" -name 'libvulkan.so.1' | head -1)
  [[ -n $lib ]] && export LD_LIBRARY_PATH="$(cd "$(dirname "$lib")" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [[ -z ${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-} ]]; then
  for j in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json \
    /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; do
    [[ -f $j ]] && { export VK_DRIVER_FILES=$j; break; }
  done
  if [[ -z ${VK_DRIVER_FILES:-} ]] && ldconfig -p 2>/dev/null | grep -q libGLX_nvidia.so.0; then
    printf '{"file_format_version":"1.0.0","ICD":{"library_path":"libGLX_nvidia.so.0","api_version":"1.3.0"}}\n' \
      >"$out/nvidia_icd.json"
    icd=$out/nvidia_icd.json
    [[ $icd == /* ]] || icd=$PWD/$icd
    export VK_DRIVER_FILES=$icd
  fi
fi
echo "vulkan: loader ${LD_LIBRARY_PATH:-system}, icd ${VK_DRIVER_FILES:-${VK_ICD_FILENAMES:-default search}}" | tee "$out/vulkan.txt"

# section NAME SECONDS COMMAND...: runs with a time limit, log in OUT/NAME.log, status kept.
section() {
  local name=$1 limit=$2; shift 2
  local t0; t0=$(date +%s)
  echo "=== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local took=$(( $(date +%s) - t0 ))
  tail -n 5 "$out/$name.log"
  summary+=("$(printf '%-22s rc=%-3s %4ss' "$name" "$rc" "$took")")
}

section info 60 "$bin" info --json
if command -v nvidia-smi >/dev/null; then
  section nvidia-smi 30 nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv
fi
[[ -d gpu-carry/ptx ]] && export KILN_PTX_DIR=$PWD/gpu-carry/ptx
section selftest-cpu 120 "$bin" selftest --backend cpu
section selftest-cuda 300 "$bin" selftest --backend cuda
# The Hopper GEMM (wgmma, sm_90a) through the same suite; elsewhere it says so and runs v4.
section selftest-cuda-v5 300 env KILN_CUDA_GEMM=v5 "$bin" selftest --backend cuda
# The default on Hopper is v7 (TMA + wgmma); v6 there too.
section selftest-cuda-v6 300 env KILN_CUDA_GEMM=v6 "$bin" selftest --backend cuda
if [[ $smoke == 1 ]]; then
  section kernels-cuda 300 "$bin" bench kernels --backend cuda-emu --json
elif [[ $quick == 1 ]]; then
  section kernels-cuda 300 "$bin" bench kernels --backend cuda --quick --json
else
  section kernels-cuda 420 "$bin" bench kernels --backend cuda --json
fi
section selftest-wgpu 300 "$bin" selftest --backend wgpu
# Attention (TFLOP/s), dequantization, RMSNorm, cross-entropy (GB/s beside a copy) through the
# backend trait: CUDA's kernels and the WGSL ones on the same card.
opsargs=(--json --seconds 1 --seq 1024,4096,16384)
[[ $quick == 1 ]] && opsargs=(--json --seconds 0.5 --seq 1024,4096)
[[ $smoke == 1 ]] && opsargs=(--json --quick --seconds 0)
section ops-cuda 300 "$bin" bench ops --backend $([[ $smoke == 1 ]] && echo cuda-emu || echo cuda) "${opsargs[@]}"
section ops-wgpu 300 "$bin" bench ops --backend wgpu "${opsargs[@]}"

shapes=(--shape 4096x4096x4096 --shape 4096x576x1536 --shape 4096x1536x576 --shape 4096x576x49152 --shape 8192x4096x4096)
[[ $quick == 1 ]] && shapes=(--shape 4096x4096x4096 --shape 4096x576x49152)
[[ $smoke == 1 ]] && shapes=(--shape 64x64x64)
section gemm-wgpu 300 "$bin" bench gemm --backend wgpu --json --seconds 2 "${shapes[@]}"
section gemm-wgpu-f16 300 "$bin" bench gemm --backend wgpu --precision f16 --json --seconds 2 "${shapes[@]}"
section gemm-cpu 120 "$bin" bench gemm --backend cpu --json --seconds 1 --shape 2048x2048x2048

if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  # The attention reference: PyTorch's scaled_dot_product_attention (FlashAttention-2 backend
  # in bf16) at the shapes of `kiln bench ops` (16 query heads sharing 4 KV heads, d 128, causal).
  section attention-torch 180 python3 - <<'EOF'
import json, torch
import torch.nn.functional as F
rows = []
for t in (1024, 4096, 16384):
    q = torch.randn(1, 16, t, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, 4, t, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, 4, t, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    do = torch.randn(1, 16, t, 128, device="cuda", dtype=torch.bfloat16)
    def fwd():
        return F.scaled_dot_product_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), is_causal=True)
    def step(bwd):
        o = fwd()
        if bwd:
            o.backward(do)
    flops = 2.0 * 16 * t * t * 128
    for name, bwd, f in (("fwd", False, flops), ("fwd+bwd", True, 3.5 * flops)):
        for _ in range(3):
            step(bwd)
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(10):
            step(bwd)
        e.record()
        torch.cuda.synchronize()
        sec = s.elapsed_time(e) / 10 / 1e3
        rows.append({"op": "attention", "variant": f"torch sdpa {name}", "dtype": "bf16",
                     "shape": f"b1 t{t} hq16 hkv4 d128 causal", "median_s": sec, "tflops": f / sec / 1e12})
print(json.dumps(rows, indent=1))
EOF
  section gemm-torch 180 python3 - <<'EOF'
import json, torch
rows = []
for dt in (torch.bfloat16, torch.float32):
    for m, k, n in ((4096, 4096, 4096), (8192, 4096, 4096), (4096, 576, 49152)):
        a = torch.randn(m, k, device="cuda", dtype=dt)
        b = torch.randn(n, k, device="cuda", dtype=dt)
        for _ in range(3):
            a @ b.T
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(20):
            a @ b.T
        e.record()
        torch.cuda.synchronize()
        t = s.elapsed_time(e) / 20 / 1e3
        rows.append({"op": "matmul", "variant": "torch (cuBLAS)", "dtype": str(dt).split(".")[1],
                     "shape": f"{m}x{k}x{n}", "median_s": t, "tflops": 2 * m * k * n / t / 1e12})
print(json.dumps(rows, indent=1))
EOF
fi

# CUDA training against the CPU: 50 LoRA steps of a small random model, per-step losses within
# 2 % (the emulation runs the same comparison in CI).
cudab=cuda
[[ $smoke == 1 ]] && cudab=cuda-emu
if python3 -c "import transformers" 2>/dev/null && python3 tools/make_tiny_model.py "$out/tiny" >"$out/make-tiny.log" 2>&1; then
  for be in cpu $cudab; do
    section "train-tiny-$be" 300 "$bin" train --backend $be --model "$out/tiny/model" --data "$out/tiny/data.jsonl" \
      --out "$out/tiny-$be" --max-steps 50 --batch-size 2 --eval-split 0 --learning-rate 3e-3 --packing false
  done
  section train-tiny-compare 30 python3 - "$out/tiny-cpu/metrics.jsonl" "$out/tiny-$cudab/metrics.jsonl" <<'EOF'
import json, sys
def losses(p):
    return [json.loads(l)["loss"] for l in open(p) if json.loads(l).get("kind") == "train"]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
print(f"{len(a)} vs {len(b)} steps; cpu {a[0]:.4f} -> {a[-1]:.4f}; gpu {b[0]:.4f} -> {b[-1]:.4f}; worst relative {worst:.2e}")
sys.exit(0 if len(a) == len(b) == 50 and worst <= 0.02 else 1)
EOF
  # Decoding with the trained adapter (the GEMV path on the GPU): the CPU's tokens.
  for be in cpu $cudab wgpu; do
    section "generate-tiny-$be" 120 "$bin" generate --backend $be --model "$out/tiny/model" \
      --adapter "$out/tiny-cpu/adapter" --raw --prompt "colour 3?" --max-new-tokens 16 --json
  done
  section generate-compare 30 python3 - "$out" $cudab <<'EOF'
import json, sys
out, gpu = sys.argv[1], sys.argv[2]
def run(be):
    return json.loads(open(f"{out}/generate-tiny-{be}.log").read().strip().splitlines()[-1])
c = run("cpu")
ok = True
for be in (gpu, "wgpu"):
    try:
        g = run(be)
    except Exception as e:
        print(f"{be}: no result ({e})"); ok = False; continue
    same = g["tokens"] == c["tokens"]
    worst = max(abs(a - b) for a, b in zip(c["logprobs"], g["logprobs"]))
    print(f"{be}: same tokens {same}, worst log-prob difference {worst:.1e}, {g['tokens_per_s']:.1f} tokens/s")
    ok = ok and same
sys.exit(0 if ok else 1)
EOF
fi

model=gpu-carry/smollm2-shaped
[[ $smoke == 1 ]] && model=gpu-carry/smoke-model
if [[ $smoke == 1 && ! -f $model/config.json ]]; then
  "$bin" demo --tiny --out "$out/smoke-demo" >"$out/make-model.log" 2>&1 && cp -r "$out/smoke-demo/model" "$model"
fi
if [[ ! -f $model/config.json ]] && python3 -c "import transformers" 2>/dev/null; then
  python3 tools/make_smollm2_shaped.py "$model" --dtype bfloat16 >"$out/make-model.log" 2>&1
fi
if [[ -f $model/config.json ]]; then
  seq=256
  [[ $smoke == 1 ]] && seq=16
  section train-cuda 300 "$bin" bench train --backend $cudab --model "$model" --batch-size 4 --seq-len $seq --steps 3 --json
  # QLoRA: the random SmolLM2-shaped base quantized at load (the real model file may not be there).
  qtype=nf4
  [[ $smoke == 1 ]] && qtype=q8_0  # the smoke model's rows of 96 are not whole NF4 blocks
  section train-cuda-qlora 300 "$bin" bench train --backend $cudab --model "$model" --method qlora --quantize $qtype \
    --batch-size 4 --seq-len $seq --steps 3 --json
  if python3 -c "import torch, peft; assert torch.cuda.is_available()" 2>/dev/null; then
    section train-torch-peft 300 python3 tools/torch_peft_step.py "$model" $seq
  fi
  section train-wgpu 300 "$bin" bench train --backend wgpu --model "$model" --batch-size 4 --seq-len $seq --steps 3 --json
  section train-wgpu-f16 300 "$bin" bench train --backend wgpu --precision f16 --model "$model" --batch-size 4 \
    --seq-len $seq --steps 3 --json
  section train-cpu 300 "$bin" bench train --backend cpu --model "$model" --batch-size 4 --seq-len $seq --steps 2 --json
fi
if [[ $quick == 0 && -f $model/config.json ]] && python3 -c "import torch, peft; assert torch.cuda.is_available()" 2>/dev/null; then
  # The largest sequence a LoRA step fits in 8 GiB, kiln (CUDA) against transformers + PEFT.
  section max-seq 540 python3 tools/max_seq.py "$bin" "$model" --budget-gib 8
  # A 1B-class Llama (random weights, made here): LoRA step tokens/s and peak memory, both stacks.
  big=gpu-carry/llama-1b-shaped
  [[ -f $big/config.json ]] || python3 tools/make_smollm2_shaped.py "$big" --shape 1b >"$out/make-1b.log" 2>&1
  if [[ -f $big/config.json ]]; then
    section train-cuda-1b 300 "$bin" bench train --backend cuda --model "$big" --batch-size 4 --seq-len 512 --steps 3 --json
    section train-torch-peft-1b 300 python3 tools/torch_peft_step.py "$big" 512
  fi
fi
if [[ $quick == 0 && -f $model/config.json ]]; then
  section dpo-wgpu 300 "$bin" train --backend wgpu --method dpo --model "$model" --data data/demo_prefs.jsonl \
    --out "$out/dpo-run" --max-steps 5 --batch-size 8 --eval-split 0
fi

echo "=== summary ($out)"
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
