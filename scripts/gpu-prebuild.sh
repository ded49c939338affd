#!/usr/bin/env bash
# Builds what scripts/gpu-native.sh needs on a GPU machine (libncp_cuda.so for sm_90, ncp_tests, ncp_bench; CMake,
# nvcc, no GPU and no cuBLAS needed) into .gpu-carry/, stamped with a hash of the sources it came from. A session lent a GPU
# then spends its device minutes on tests and benchmarks, not on compiling: `run` with carry [".gpu-carry"] and
# `bash scripts/gpu-compare.sh $OUT`. gpu-native.sh builds anyway when the stamp does not match the sources there.
#   scripts/gpu-prebuild.sh            (NCP_GPU_PREBUILD_DIR=build dir, default build-cuda; NCP_CUDA_ARCH=90)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${NCP_GPU_PREBUILD_DIR:-build-cuda}
cmake -S . -B "$build" -DNCP_ADDON=OFF -DNCP_CUDA=on -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES="${NCP_CUDA_ARCH:-90}" >/dev/null
cmake --build "$build" -j "$(nproc)" --target ncp_cuda ncp_tests ncp_bench
rm -rf .gpu-carry.tmp && mkdir .gpu-carry.tmp
cp "$build/Release/libncp_cuda.so" "$build/ncp_tests" "$build/ncp_bench" .gpu-carry.tmp/
strip --strip-unneeded .gpu-carry.tmp/ncp_tests .gpu-carry.tmp/ncp_bench .gpu-carry.tmp/libncp_cuda.so
bash scripts/source-stamp.sh >.gpu-carry.tmp/TREE
rm -rf .gpu-carry && mv .gpu-carry.tmp .gpu-carry
du -sh .gpu-carry && cat .gpu-carry/TREE
