#!/usr/bin/env bash
# The first call on a fresh GPU machine (NVIDIA driver, Python with torch; no Rust, no network):
# one command, under 7 minutes with its own deadline, that answers "how fast are kiln's CUDA
# kernels here, beside cuBLAS/SDPA, and how far from the profiler's model". CUDA sections first;
# every section's output goes into ONE archive, OUT/gpu-first.tar.gz (< 16 MiB), beside
# OUT/summary.txt, the table printed last:
#   per GEMM variant and attention: kiln's TFLOP/s and torch's at the same shape, their ratio,
#   and the roofline model's prediction for the card (bench/prof/h100.jsonl, model v1; the H200
#   row differs from the H100's by DRAM bandwidth alone, so its prediction is rescaled from it).
# Bench rows are appended as JSON lines as they finish (a fault keeps the rows before it); the
# selftests run as separate processes; with Nsight Compute (ncu) or compute-sanitizer on the
# machine, their counters for v3, v5, v6, v7 and attention and a memcheck of a selftest subset are added.
#
#   tools/gpu-first.sh [--smoke] [--all] [--bin PATH] OUT
#
# --smoke: the same sections on the CUDA emulation at tiny shapes (here, without a GPU);
# --all: then tools/gpu-check.sh --quick (wgpu, CPU, training, PEFT) in the time left.
# Carry gpu-carry/ from tools/gpu-carry.sh (the release binary and the PTX).
set -uo pipefail
caller=$PWD
cd "$(dirname "$0")/.."
abs() { [[ $1 == /* ]] && echo "$1" || echo "$caller/$1"; }
smoke=0
all=0
bin=gpu-carry/kiln
while [[ $# -gt 1 ]]; do
  case $1 in
    --smoke) smoke=1; shift ;;
    --all) all=1; shift ;;
    --bin) bin=$(abs "$2"); given_bin=1; shift 2 ;;
    *) break ;;
  esac
done
(( $# == 1 )) || { echo "usage: tools/gpu-first.sh [--smoke] [--all] [--bin PATH] OUT"; exit 2; }
out=$(abs "$1")
mkdir -p "$out"
if [[ ! -x $bin ]]; then
  [[ -n ${given_bin:-} ]] && { echo "--bin $bin: not an executable"; exit 2; }
  bin=target/release/kiln
fi
[[ -x $bin ]] || { echo "no kiln binary (gpu-carry/kiln or target/release/kiln; --bin PATH)"; exit 2; }
deadline=$(( $(date +%s) + ${GPU_FIRST_SECONDS:-400} ))
work=$(mktemp -d)
mkdir -p "$work/gpu-first"
w=$work/gpu-first
status=()

# section NAME LIMIT COMMAND...: at most LIMIT seconds and never past the deadline (20 s kept
# for the archive); output in w/NAME.log.
section() {
  local name=$1 limit=$2; shift 2
  local left=$(( deadline - $(date +%s) - 20 ))
  (( left < limit )) && limit=$left
  if (( limit < 5 )); then
    status+=("$(printf '%-20s skipped: the deadline' "$name")")
    return
  fi
  local t0; t0=$(date +%s)
  echo "=== $name (limit ${limit}s)"
  timeout -k 5 "$limit" "$@" >"$w/$name.log" 2>&1
  local rc=$?
  tail -n 3 "$w/$name.log"
  status+=("$(printf '%-20s rc=%-3s %4ss' "$name" "$rc" "$(( $(date +%s) - t0 ))")")
}

be=cuda
[[ $smoke == 1 ]] && be=cuda-emu
[[ -d gpu-carry/ptx ]] && export KILN_PTX_DIR=$PWD/gpu-carry/ptx
if command -v nvidia-smi >/dev/null; then
  section nvidia-smi 20 nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv
fi
section info 30 "$bin" info --json
# A fault names its launch (kernel, grid, block) instead of surfacing at a later call.
export KILN_CUDA_SYNC=1
section selftest-cuda 120 "$bin" selftest --backend $be
section selftest-cuda-v5 120 env KILN_CUDA_GEMM=v5 "$bin" selftest --backend $be
# On a Hopper GPU the default is v7 (v6 serves its pre-passes); v6 as a whole on the card too.
[[ $smoke == 0 ]] && section selftest-cuda-v6 120 env KILN_CUDA_GEMM=v6 "$bin" selftest --backend $be
unset KILN_CUDA_SYNC
if [[ $smoke == 1 ]]; then
  section bench-kernels 120 "$bin" bench kernels --backend cuda-emu --op gemm,qgemm --json --jsonl "$w/kernels.jsonl"
  section bench-attention 60 "$bin" bench ops --backend cuda-emu --op attention --quick --seconds 0 --json
else
  section bench-kernels 150 "$bin" bench kernels --backend cuda --quick --op gemm,lora,qgemm,gemv --json \
    --jsonl "$w/kernels.jsonl"
  section bench-attention 60 "$bin" bench ops --backend cuda --op attention --seq 2048 --heads 16:16:128 \
    --seconds 0.5 --json
fi
if [[ $smoke == 0 ]] && python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  section torch 60 python3 - <<'PY'
import json, torch
import torch.nn.functional as F
def timed(f, n=20):
    for _ in range(3): f()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n): f()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / n / 1e3
a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
b = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
t = timed(lambda: a @ b.T)
print(json.dumps({"case": "gemm", "impl": "torch cuBLAS bf16", "shape": "4096x4096x4096", "s": t, "tflops": 2 * 4096**3 / t / 1e12}))
q, k, v = (torch.randn(1, 16, 2048, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
do = torch.randn_like(q)
flops = 2.0 * 16 * 2048 * 2048 * 128
t = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
print(json.dumps({"case": "attention fwd", "impl": "torch SDPA bf16", "shape": "b1 t2048 h16 d128 causal", "s": t, "tflops": flops / t / 1e12}))
t = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(do))
print(json.dumps({"case": "attention fwd+bwd", "impl": "torch SDPA bf16", "shape": "b1 t2048 h16 d128 causal", "s": t, "tflops": 3.5 * flops / t / 1e12}))
PY
fi
if [[ $smoke == 0 ]] && command -v ncu >/dev/null; then
  # One kernel per call (the benches launch each many times: the second launch is profiled).
  metrics=sm__throughput.avg.pct_of_peak_sustained_elapsed,gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed
  metrics+=,smsp__inst_executed.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum,dram__bytes.sum
  hmma=$metrics,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active
  # Hopper's wgmma runs on its own pipe; where ncu does not know the name the section says so.
  gmma=$metrics,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active
  ncu_one() {  # NAME METRICS KERNEL COMMAND...
    local name=$1 m=$2 k=$3; shift 3
    section "$name" 40 ncu --metrics "$m" -k "regex:^$k\$" --launch-skip 1 -c 1 "$@"
  }
  ncu_one ncu-gemm-v3 "$hmma" gemm_v3_mma_bf16 "$bin" bench kernels --backend cuda --quick --op gemm --shape 4096x4096x4096
  ncu_one ncu-gemm-v5 "$gmma" gemm_v5_wgmma_bf16 "$bin" bench kernels --backend cuda --quick --op gemm --shape 4096x4096x4096
  ncu_one ncu-gemm-v6 "$hmma" gemm_v6_mma_multistage_bf16 "$bin" bench kernels --backend cuda --quick --op gemm --shape 4096x4096x4096
  ncu_one ncu-gemm-v7 "$gmma" gemm_v7_tma_wgmma_bf16 "$bin" bench kernels --backend cuda --quick --op gemm --shape 4096x4096x4096
  ncu_one ncu-attn-fwd "$hmma" attn_fwd_v2_mma "$bin" bench ops --backend cuda --op attention --seq 2048 --heads 16:16:128 --seconds 0
  ncu_one ncu-attn-dkv "$hmma" attn_bwd_dkv_v2_mma "$bin" bench ops --backend cuda --op attention --seq 2048 --heads 16:16:128 --seconds 0
fi
if [[ $smoke == 0 ]] && command -v compute-sanitizer >/dev/null; then
  section memcheck 60 env KILN_SELFTEST_OP=rms_norm,rope,attention compute-sanitizer --tool memcheck \
    "$bin" selftest --backend cuda
fi
if [[ $all == 1 ]]; then
  left=$(( deadline - $(date +%s) - 30 ))
  (( left > 30 )) && section gpu-check "$left" bash tools/gpu-check.sh --quick --bin "$bin" "$w/gpu-check"
fi

# The summary: kiln beside torch and the model.
card=h100
grep -qi h200 "$w/nvidia-smi.log" 2>/dev/null && card=h200
python3 - "$w" "$card" bench/prof/h100.jsonl >"$w/summary.txt" 2>&1 <<'PY'
import json, os, sys
w, card, model_file = sys.argv[1:4]
def lines(p):
    try:
        return [json.loads(l) for l in open(p) if l.strip().startswith("{")]
    except OSError:
        return []
def arr(p):
    # The JSON array the command printed, among whatever else its log holds.
    try:
        t = open(p).read()
    except OSError:
        return []
    dec = json.JSONDecoder()
    at = 0
    while (at := t.find("[", at)) >= 0:
        try:
            v, _ = dec.raw_decode(t[at:])
            if isinstance(v, list) and all(isinstance(x, dict) for x in v):
                return v
        except ValueError:
            pass
        at += 1
    return []
kernels = lines(f"{w}/kernels.jsonl")
attn = arr(f"{w}/bench-attention.log")
torch = {r["case"]: r for r in lines(f"{w}/torch.log")}
# The model's cases and their shapes (kiln's rows count only where the shape is the model's).
model = {}
for r in lines(model_file):
    if "kernel" not in r:
        t = r["modeled_s"]
        if card == "h200":
            # Same SMs, clocks and tensor rates as the H100: only DRAM time changes (3.35 → 4.8 TB/s).
            t = sum(max(l["tensor_s"], l["issue_s"] or 0, l["dram_s"] * 3350 / 4800, l["smem_s"]) + 3e-6
                    for l in lines(model_file) if l.get("case") == r["case"] and "kernel" in l)
        model[r["case"]] = (r["useful_flops"] / t / 1e12 if r["useful_flops"] and t > 0 else None, r["shape"])
print(f"card model: {card} (model v1, {model_file}); kiln/model only where the shape is the model's")
print(f"{'case':<26} {'shape':<26} {'kiln TF/s':>10} {'torch TF/s':>10} {'kiln/torch':>10} {'model TF/s':>10} {'kiln/model':>10}")
def same(shape, model_shape):
    # gemm "4096x4096x4096"; attention "b1 t2048 hq16 hkv16 d128 causal" against "1x2048x16x128".
    if "x" in shape and " " not in shape:
        return shape == model_shape
    b, t, h, d = model_shape.split("x")
    return f"b{b} t{t} hq{h} hkv{h} d{d}" in shape
def row(case, shape, k, t, m):
    f = lambda x: "—" if x is None else f"{x:.2f}"
    r = lambda a, b: "—" if a is None or not b else f"{a / b:.3f}"
    mt, ms = m if m else (None, "")
    km = r(k, mt) if ms and same(shape, ms) else "(shape)"
    print(f"{case:<26} {shape:<26} {f(k):>10} {f(t):>10} {r(k, t):>10} {f(mt):>10} {km:>10}")
tg = torch.get("gemm", {}).get("tflops")
for r in kernels:
    if r.get("op", "").startswith("gemm") and "bf16" in r.get("dtype", ""):
        v = r["variant"].split()[0].split("_")[0]
        row(f"gemm {r['variant'][:20]}", r["shape"], r.get("tflops"), tg, model.get(f"gemm {v} bf16"))
for r in attn:
    case = f"attention {r['variant']}"
    row(case, r["shape"][:26], r.get("tflops"), torch.get(case, {}).get("tflops"), model.get(f"attention v2 {r['variant']}"))
PY
cat "$w/summary.txt"
printf '%s\n' "${status[@]}" | tee "$w/sections.txt"
tar czf "$out/gpu-first.tar.gz" -C "$work" gpu-first
cp "$w/summary.txt" "$out/summary.txt"
rm -rf "$work"
size=$(stat -c %s "$out/gpu-first.tar.gz")
echo "archive: $out/gpu-first.tar.gz ($(( size / 1024 )) KiB)"
(( size < 16 * 1048576 )) || { echo "archive over 16 MiB"; exit 1; }
