#!/usr/bin/env bash
# The short GPU check after a change, for a session with only a few device minutes left (about 3 minutes with the
# binaries of scripts/gpu-prebuild.sh; gpu-compare.sh is the full comparison with PyTorch):
#   1. every native cuda test (op parity, golden forward and gradients, training steps, fp16, profile);
#   2. the bf16 golden gradients again under materialized attention (bf16 weights now default to fused-async8);
#      one LoRA adapter alone at SDXL's shapes and the row counts between them, on cold operands (fused kernels
#      against the GEMM chain);
#   3. the SDXL 1024² bf16 NCP-DPO step as `train --mixed-precision bf16` runs it (no environment overrides), with
#      the LoRA adapters on their fused kernels (NCP_CUDA_LORA=fused; the default is the GEMM chain), with
#      --recompute feedforward (memory), and one profiled step.
#   scripts/gpu-quick.sh [log-dir]        (NCP_GPU_BENCH_LIMIT=seconds per benchmark, default 75)
set -uo pipefail
cd "$(dirname "$0")/.."
log=${1:-gpu-logs}
mkdir -p "$log"
limit=${NCP_GPU_BENCH_LIMIT:-75}
bash scripts/gpu-native.sh tests 2>&1 | tee "$log/1-tests.txt"
[ -x build-gpu/ncp_bench ] || exit 1
b="timeout $limit build-gpu/ncp_bench"
{
  echo "== bf16 golden gradients under materialized attention"
  NCP_CUDA_ATTENTION=materialized timeout "$limit" build-gpu/ncp_tests "with bf16 weights, no worse"
  echo "== one LoRA adapter, rank 4: fused kernels, then the GEMM chain"
  for rows in 512 1024 2048 4096; do $b lora --rows "$rows" --in 1280 --rank 4 --device cuda --reps 20; done
  $b lora --rows 8192 --in 640 --rank 4 --device cuda --reps 20
  $b lora --rows 154 --in 2048 --out 1280 --rank 4 --device cuda --reps 20
  $b lora --rows 2048 --in 1280 --rank 8 --device cuda --reps 20
} 2>&1 | tee "$log/2-ops.txt"
step="step --config sdxl --latent 128 --pairs 1 --objective dpo --space ncp --device cuda --weights bf16"
{
  echo "== SDXL 128x128 NCP-DPO step, bf16 weights, defaults; then LoRA on its fused kernels; then --recompute feedforward"
  $b $step --reps 3
  NCP_CUDA_LORA=fused $b $step --reps 3
  $b $step --reps 3 --recompute feedforward
  echo "== the same step profiled (device events, nothing synchronised)"
  $b $step --reps 1 --profile gpu
} 2>&1 | tee "$log/3-steps.txt"
