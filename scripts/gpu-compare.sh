#!/usr/bin/env bash
# One GPU session's checks and figures, in priority order (each step's output is kept even if a later one
# runs out of time): build + native cuda tests, ncp-native's GPU benchmarks (float32, TF32, bf16 weights, bf16 with
# the fused attention kernels), then the PyTorch baseline (bench/pytorch/gpu_step_bench.py: the plain-PyTorch port
# of diffusers' U-Net, the same step) on the same GPU at float32, TF32 and bf16 autocast.
#   scripts/gpu-compare.sh [log-dir]
set -uo pipefail
cd "$(dirname "$0")/.."
log=${1:-gpu-logs}
mkdir -p "$log"
bash scripts/gpu-native.sh tests 2>&1 | tee "$log/tests.txt"
b=build-gpu/ncp_bench
sdxl_step="step --config sdxl --latent 128 --pairs 1 --objective dpo --space ncp --device cuda --reps 3"
sdxl_fwd="unet --config sdxl --latent 128 --batch 2 --device cuda --reps 3"
{
  echo "== ncp-native SDXL 128x128: float32 (TF32 off), TF32, bf16 weights (+ TF32 for the float GEMMs)"
  $b $sdxl_fwd; $b $sdxl_step
  NCP_CUDA_TF32=1 $b $sdxl_fwd; NCP_CUDA_TF32=1 $b $sdxl_step
  NCP_CUDA_TF32=1 $b $sdxl_fwd --weights bf16; NCP_CUDA_TF32=1 $b $sdxl_step --weights bf16
  echo "== the same bf16 runs with the fused attention kernels (NCP_CUDA_ATTENTION=fused)"
  export NCP_CUDA_ATTENTION=fused
  NCP_CUDA_TF32=1 $b $sdxl_fwd --weights bf16; NCP_CUDA_TF32=1 $b $sdxl_step --weights bf16
  echo "== and with selective recompute (--recompute feedforward, then feedforward,qkv: the memory target's candidates)"
  NCP_CUDA_TF32=1 $b $sdxl_step --weights bf16 --recompute feedforward
  NCP_CUDA_TF32=1 $b $sdxl_step --weights bf16 --recompute feedforward,qkv
  echo "== fp16 weights (float32 tape, loss scaling), plain and with selective recompute"
  NCP_CUDA_TF32=1 $b $sdxl_fwd --weights fp16; NCP_CUDA_TF32=1 $b $sdxl_step --weights fp16
  NCP_CUDA_TF32=1 $b $sdxl_step --weights fp16 --recompute feedforward,qkv
  unset NCP_CUDA_ATTENTION
} 2>&1 | tee "$log/ours-sdxl.txt"
export PYTHONUNBUFFERED=1
echo "== PyTorch $(python3 -c 'import torch; print(torch.__version__)'), SDXL 128x128" | tee "$log/torch-sdxl.txt"
timeout 120 python3 bench/pytorch/gpu_step_bench.py --config sdxl --latent 128 --cases forward,ncp \
  --precision fp32,tf32,bf16 --steps 3 --device cuda 2>&1 | tee -a "$log/torch-sdxl.txt"
{
  echo "== ncp-native SD1.5 64x64: float32, TF32, bf16 weights"
  $b unet --config sd15 --latent 64 --batch 2 --device cuda --reps 5
  $b step --config sd15 --latent 64 --pairs 1 --objective dpo --space ncp --device cuda --reps 3
  NCP_CUDA_TF32=1 $b step --config sd15 --latent 64 --pairs 1 --objective dpo --space ncp --device cuda --reps 3
  NCP_CUDA_TF32=1 $b step --config sd15 --latent 64 --pairs 1 --objective dpo --space ncp --device cuda --reps 3 --weights bf16
  NCP_CUDA_ATTENTION=fused NCP_CUDA_TF32=1 $b step --config sd15 --latent 64 --pairs 1 --objective dpo --space ncp \
    --device cuda --reps 3 --weights bf16
} 2>&1 | tee "$log/ours-sd15.txt"
echo "== PyTorch SD1.5 64x64" | tee "$log/torch-sd15.txt"
timeout 60 python3 bench/pytorch/gpu_step_bench.py --config sd15 --latent 64 --cases forward,ncp \
  --precision fp32,tf32,bf16 --steps 3 --device cuda 2>&1 | tee -a "$log/torch-sd15.txt"
echo "== ncp-native SDXL 128x128 NCP-DPO step, bf16 weights, gradient checkpointing" | tee "$log/ours-ckpt.txt"
NCP_CUDA_TF32=1 $b $sdxl_step --weights bf16 --gradient-checkpointing on 2>&1 | tee -a "$log/ours-ckpt.txt"
NCP_CUDA_ATTENTION=fused NCP_CUDA_TF32=1 $b $sdxl_step --weights bf16 --gradient-checkpointing on 2>&1 | tee -a "$log/ours-ckpt.txt"
