#!/usr/bin/env bash
# Prepares gpu-carry/ for tools/gpu-first.sh and tools/gpu-check.sh on a machine with an NVIDIA
# GPU and no Rust (the device tool's H100/H200): a release `kiln` without debug info (the carry
# limit is 64 MiB) and the CUDA kernels compiled ahead of time, as PTX and as cubins, so the GPU
# machine needs only its driver.
#
#   tools/gpu-carry.sh            then, on the GPU machine (carry gpu-carry/kiln, gpu-carry/ptx and
#                                 gpu-carry/vulkan):
#   tools/gpu-first.sh OUT        (one archive, the summary last; or tools/gpu-check.sh [--quick] OUT)
#
# ARCHS overrides the PTX targets (default: Ampere to Blackwell; sm_90a serves H100 and H200
# with the wgmma GEMM, sm_90 any later 9.x).
set -euo pipefail
cd "$(dirname "$0")/.."
archs=${ARCHS:-sm_80,sm_86,sm_89,sm_90,sm_90a,sm_120}

cargo build --release -p kiln --locked
mkdir -p gpu-carry
objcopy --strip-debug target/release/kiln gpu-carry/kiln.tmp && mv gpu-carry/kiln.tmp gpu-carry/kiln

# NVRTC and the CUDA headers from NVIDIA's pip wheels, as tools/test.sh sets them up.
if ! python3 -c "import nvidia.cuda_nvrtc, nvidia.cuda_runtime" >/dev/null 2>&1; then
  python3 -m pip install --quiet "nvidia-cuda-nvrtc-cu12==12.9.*" "nvidia-cuda-runtime-cu12==12.9.*"
fi
nv() { python3 -c "import nvidia.$1 as m; print(m.__path__[0])"; }
export LD_LIBRARY_PATH="$(nv cuda_nvrtc)/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
rm -rf gpu-carry/ptx gpu-carry/cubin
gpu-carry/kiln kernels build --arch "$archs" --out gpu-carry/ptx --cuda-include "$(nv cuda_runtime)/include"
# Cubins beside the PTX (drivers older than CUDA 12.9 cannot load its PTX, ISA 8.8): assembled by
# ptxas from the CUDA 12.9 wheel, for CUBIN_ARCHS (default A100, RTX 30, RTX 40, H100/H200).
cubin_archs=${CUBIN_ARCHS:-sm_80,sm_86,sm_89,compute_90a}
if [[ -n $cubin_archs ]]; then
  if ! python3 -c "import nvidia.cuda_nvcc" >/dev/null 2>&1; then
    python3 -m pip install --quiet "nvidia-cuda-nvcc-cu12==12.9.*"
  fi
  KILN_PTXAS="$(nv cuda_nvcc)/bin/ptxas" gpu-carry/kiln kernels build --arch "$cubin_archs" --cubin \
    --out gpu-carry/cubin --cuda-include "$(nv cuda_runtime)/include"
  mv gpu-carry/cubin/*.cubin gpu-carry/ptx/ && rm -rf gpu-carry/cubin
fi

# The Vulkan loader, for a GPU machine without one (wgpu on the NVIDIA card through Vulkan).
rm -rf gpu-carry/vulkan && mkdir -p gpu-carry/vulkan
(cd gpu-carry/vulkan && apt-get download libvulkan1 >/dev/null 2>&1) || echo "note: no libvulkan1 .deb fetched"
size=$(du -cb gpu-carry/kiln gpu-carry/ptx gpu-carry/vulkan | tail -1 | cut -f1)
if (( size >= 64 * 1048576 )); then
  # Over the carry limit: keep the Hopper cubins only (the lent GPUs), PTX serves the rest.
  find gpu-carry/ptx -name '*.cubin' ! -name '*.sm_90a.cubin' -delete
  echo "gpu-carry: over 64 MiB with every cubin; kept sm_90a's"
  size=$(du -cb gpu-carry/kiln gpu-carry/ptx gpu-carry/vulkan | tail -1 | cut -f1)
fi
echo "gpu-carry: kiln + ptx + vulkan = $(( size / 1048576 )) MiB (carry limit 64 MiB)"
(( size < 64 * 1048576 )) || { echo "too large to carry"; exit 1; }
