#!/usr/bin/env bash
# The roofline model's baseline for today's kernels: every kernel family at the shapes of
# `kiln bench kernels` (GEMMs 4096³; attention 1×2048×16×128), profiled on the CUDA emulation
# and modeled on a card, one JSON line per launch and per op in OUT/prof-<card>.jsonl, and a
# markdown table on stdout (bench/RESULTS.md records it).
#   bash tools/prof-baseline.sh [--card h100] [--smoke] [OUT]
# --smoke: small shapes (seconds, not minutes), for checking the script itself.
set -euo pipefail
card=h100
smoke=0
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --card) card="$2"; shift 2 ;;
    --smoke) smoke=1; shift ;;
    *) out="$1"; shift ;;
  esac
done
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${out:-$root/target/prof-baseline}"
mkdir -p "$out"
kiln="${KILN:-$root/target/release/kiln}"
[ -x "$kiln" ] || { echo "prof-baseline: no kiln binary at $kiln (cargo build --release, or set KILN)" >&2; exit 1; }
if [ "$smoke" = 1 ]; then g=256x256x256; l=256x256x256x16; a=1x128x2x64; v=256x256; r=64x256; c=32x1000; n=100000; e=64x256x1000
else g=4096x4096x4096; l=4096x4096x4096x16; a=1x2048x16x128; v=4096x4096; r=16384x4096; c=4096x32000; n=16777216; e=16384x4096x32000; fi
jsonl="$out/prof-$card.jsonl"
: > "$jsonl"
run() {  # label, kiln prof run arguments
  local label="$1"; shift
  echo "prof-baseline: $label" >&2
  "$kiln" prof run --card "$card" --json "$@" | sed "s/^{/{\"case\": \"$label\", /" >> "$jsonl"
}
# The scalar GEMMs (one FMA per lane per element, every operand through the hooks) run a quarter
# of a wave: their DRAM figure then assumes waves of 33 CTAs (an upper bound), their issue and
# shared-memory figures are per CTA and exact.
scalar=33
[ "$smoke" = 1 ] && scalar=0
for gv in v1 v2; do run "gemm $gv bf16" --op gemm --shape $g --variant $gv --dtype bf16 --max-ctas $scalar; done
for gv in v3 v4 v5 v6 v7; do run "gemm $gv bf16" --op gemm --shape $g --variant $gv --dtype bf16; done
run "gemm v2 f32" --op gemm --shape $g --variant v2 --dtype f32 --max-ctas $scalar
for gv in v3 v6 v7; do
  run "qgemm $gv Q4_K" --op qgemm --shape $g --variant $gv --dtype q4_k
  run "qgemm $gv NF4" --op qgemm --shape $g --variant $gv --dtype nf4
  # v7's LoRA rows on 16 CTAs a launch, as its mixed-precision rows below: its launches are bound
  # by the tensor cores or shared memory, which the sample gives exactly (a whole wave takes an
  # hour of emulation).
  sample=()
  [ "$gv" = v7 ] && [ "$smoke" = 0 ] && sample=(--max-ctas 16)
  run "lora $gv r16 fwd" --op lora --shape $l --variant $gv "${sample[@]}"
  run "lora $gv r16 fwd+bwd" --op lora_bwd --shape $l --variant $gv "${sample[@]}"
done
# The mixed-precision path (activations bf16 between kernels, KILN_CUDA_ACT's default): v7 reads x
# and dy as they are and writes y and dx in bf16 (no packing pass); 16 CTAs a launch.
run "gemm v7 bf16 act16" --op gemm --shape $g --variant v7 --dtype bf16 --act bf16 --max-ctas 16
run "qgemm v7 NF4 act16" --op qgemm --shape $g --variant v7 --dtype nf4 --act bf16 --max-ctas 16
run "lora v7 r16 fwd act16" --op lora --shape $l --variant v7 --act bf16 --max-ctas 16
run "lora v7 r16 fwd+bwd act16" --op lora_bwd --shape $l --variant v7 --act bf16 --max-ctas 16
run "gemv bf16" --op gemv --shape $v --dtype bf16
run "gemv Q4_K" --op gemv --shape $v --dtype q4_k
# Attention v3 (FlashAttention-2's structure; its f32-activation rows round Q, K, V to bf16 first).
# Causal CTAs differ in work; 32 CTAs a launch are whole heads (every query or key tile of one).
run "attention v3 fwd" --op attention --shape $a --max-ctas 32
run "attention v3 fwd+bwd" --op attention_bwd --shape $a --max-ctas 32
run "attention v3 fwd act16" --op attention --shape $a --act bf16 --max-ctas 32
run "attention v3 fwd+bwd act16" --op attention_bwd --shape $a --act bf16 --max-ctas 32
run "rms_norm fwd+bwd" --op rms_norm --shape $r
run "cross_entropy fwd+bwd" --op cross_entropy --shape $c
run "adamw" --op adamw --shape $n
run "add f32" --op add --shape $n
run "embedding fwd" --op embedding --shape $e
python3 - "$jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| case | kernel | CTAs run | ld eff | st eff | smem WF/req ld, st | CTAs/SM | DRAM MB | bound | modeled µs | % tensor peak | % DRAM peak |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
pct = lambda x: "—" if x is None else f"{100 * x:.0f} %"
for r in rows:
    if "kernel" in r:
        ld = r["lds_wavefronts"] + r["ldsm_wavefronts"]; lq = r["lds_requests"] + r["ldsm_requests"]
        wf = lambda a, b: "—" if not b else f"{a / b:.2f}"
        print(f"| {r['case']} | {r['kernel']} | {r['ctas_run']}/{r['ctas_total']} | {pct(r['load_efficiency'])} | "
              f"{pct(r['store_efficiency'])} | {wf(ld, lq)}, {wf(r['sts_wavefronts'], r['sts_requests'])} | "
              f"{r['ctas_per_sm']} | {'≤' if r['dram_upper_bound'] else ''}{r['dram_bytes'] / 1e6:.0f} | {r['bound']} | "
              f"{r['time_s'] * 1e6:.1f} | {100 * r['tensor_fraction']:.1f} | {100 * r['dram_fraction']:.1f} |")
    else:
        print(f"| **{r['case']}** | {r['launches']} launches ({r['op']} {r['shape']}, {r['dtype']}) | | | | | | | | "
              f"**{r['modeled_s'] * 1e6:.1f}** | **{100 * r['tensor_fraction']:.1f}** | **{100 * r['dram_fraction']:.1f}** |")
PY
