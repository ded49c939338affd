#!/usr/bin/env bash
# The CUDA backend on a GPU machine without Node.js (or before `npm install`): builds libncp_cuda, the native
# tests and ncp_bench with CMake, runs every "cuda" test case (op parity, golden U-Net forward, the twelve golden
# objective gradients, GPU training steps against the CPU's), then the GPU benchmarks.
#
#   scripts/gpu-native.sh [tests|bench|all]      (default all; NCP_GPU_BUILD=dir, NCP_CUDA_ARCH=90)
#
# cuBLAS is opened at run time: the script adds the directory of PyTorch's nvidia-cublas wheel, when there is
# one, to LD_LIBRARY_PATH (NCP_CUBLAS_LIB names a library file directly).
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
build=${NCP_GPU_BUILD:-build-gpu}
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "skip: no NVIDIA GPU visible (nvidia-smi)"; exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
cublas_dir=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null || true)
[ -n "$cublas_dir" ] && export LD_LIBRARY_PATH="$cublas_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "cublas dir: ${cublas_dir:-none found, own GEMM kernel}"
jobs=$(nproc)
# Binaries built before the GPU was lent (scripts/gpu-prebuild.sh writes .gpu-carry/; the device run carries it)
# save the build's minutes of device time. They are used only when they run here and were built from these sources.
prebuilt=${NCP_GPU_PREBUILT:-.gpu-carry}
use_prebuilt=0
if [ -x "$prebuilt/ncp_tests" ] && [ -x "$prebuilt/ncp_bench" ] && [ -f "$prebuilt/libncp_cuda.so" ]; then
  tree=$(bash scripts/source-stamp.sh)
  if [ "$(cat "$prebuilt/TREE" 2>/dev/null)" != "$tree" ]; then
    echo "prebuilt binaries in $prebuilt are from another tree ($(cat "$prebuilt/TREE" 2>/dev/null)); building"
  elif ! "$prebuilt/ncp_tests" "no such case" >/dev/null 2>&1; then
    echo "prebuilt binaries in $prebuilt do not run here; building"
  else
    use_prebuilt=1
  fi
fi
if [ "$use_prebuilt" = 1 ]; then
  mkdir -p "$build" && cp "$prebuilt/ncp_tests" "$prebuilt/ncp_bench" "$prebuilt/libncp_cuda.so" "$build/"
  echo "using the prebuilt binaries of $prebuilt (tree $(cat "$prebuilt/TREE"))"
else
  cmake -S . -B "$build" -DNCP_ADDON=OFF -DNCP_CUDA=on -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES="${NCP_CUDA_ARCH:-90}" >"$build.configure.log" 2>&1 || { cat "$build.configure.log"; exit 1; }
  cmake --build "$build" -j "$jobs" --target ncp_cuda ncp_tests ncp_bench 2>&1 | grep -E "error|warning: |Built target" || true
fi
[ -x "$build/ncp_bench" ] || { echo "build failed"; exit 1; }
rc=0
if [ "$what" = tests ] || [ "$what" = all ]; then
  echo "== native cuda tests"
  "$build/ncp_tests" cuda || rc=1
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  echo "== GPU benchmarks (fp32 weights and activations; TF32 ${NCP_CUDA_TF32:-off})"
  b="$build/ncp_bench"
  $b unet --config sd15 --latent 64 --batch 2 --device cuda --reps 5 || rc=1
  $b step --config sd15 --latent 64 --pairs 1 --objective dpo --space ncp --device cuda --reps 3 || rc=1
  $b unet --config sdxl --latent 128 --batch 2 --device cuda --reps 3 || rc=1
  $b step --config sdxl --latent 128 --pairs 1 --objective dpo --space ncp --device cuda --reps 2 || rc=1
fi
exit $rc
