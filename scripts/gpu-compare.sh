#!/usr/bin/env bash
# One GPU session's checks and figures, most important first, so that a session whose device time runs out still
# brings back what matters (each step writes its own log as it goes; every benchmark has its own time limit):
#   1. build + every native cuda test (op parity, golden forward and gradients, training steps, fp16, blocked and
#      fused attention);
#   2. the attention op alone at SDXL's and SD1.5's shapes under each attention mode, against PyTorch's SDPA (a few
#      seconds: which fused forward is faster, and by how much against flash attention), and one LoRA adapter alone
#      (fused kernels against the GEMM chain, in GB/s against the HBM's bandwidth); the SDXL 1024² NCP-DPO
#      step that issue 7's targets name, in bf16: with the defaults of bf16 weights (fused-async8 attention, LoRA
#      on the GEMM chain), with materialized attention, with fused-async, with the LoRA adapters on their fused
#      kernels, with selective recompute, with gradient checkpointing, and one
#      profiled step (device time, host time and launches per op kind);
#      then PyTorch's bf16 step on the same GPU (bench/pytorch/gpu_step_bench.py: the plain-PyTorch port of
#      diffusers' U-Net);
#   3. fp16 weights; 4. float32 and TF32 (ours and PyTorch's); 5. SD1.5 at 512².
#   scripts/gpu-compare.sh [log-dir]        (NCP_GPU_BENCH_LIMIT=seconds per benchmark, default 120)
set -uo pipefail
cd "$(dirname "$0")/.."
log=${1:-gpu-logs}
mkdir -p "$log"
limit=${NCP_GPU_BENCH_LIMIT:-120}
bash scripts/gpu-native.sh tests 2>&1 | tee "$log/1-tests.txt"
b="timeout $limit build-gpu/ncp_bench"
sdxl_step="step --config sdxl --latent 128 --pairs 1 --objective dpo --space ncp --device cuda --reps 3"
sdxl_fwd="unet --config sdxl --latent 128 --batch 2 --device cuda --reps 3"
sd15_step="step --config sd15 --latent 64 --pairs 1 --objective dpo --space ncp --device cuda --reps 3"
export PYTHONUNBUFFERED=1
torch_bench() { timeout "$limit" python3 bench/pytorch/gpu_step_bench.py --steps 3 --device cuda "$@"; }
# TF32 for float32 weights' GEMMs in step 4's "TF32" rows (and the op benches); mixed precision turns it on by itself
export NCP_CUDA_TF32=1
{
  echo "== attention alone, batch 2: SDXL 1024² (4096 tokens x 10 heads, 1024 x 20; head dim 64), SD1.5 512² (4096 x 8"
  echo "   heads of 40): ours under each mode (materialized; fused = mma.sync kernels; fused-async, fused-async8 = the"
  echo "   same, double-buffered by cp.async, 4 or 8 warps a forward block; fused-wmma), then PyTorch's SDPA bf16"
  for shape in "--tokens 4096 --heads 10 --head-dim 64" "--tokens 1024 --heads 20 --head-dim 64" \
               "--tokens 4096 --heads 8 --head-dim 40"; do
    $b attention --batch 2 $shape --device cuda --reps 10
  done
  timeout "$limit" python3 bench/pytorch/attention_bench.py --batch 2 --shape 4096x10x64 --shape 1024x20x64 \
    --shape 4096x8x40 --reps 10
  echo "== one LoRA adapter alone (fused kernels, then the GEMM chain): SDXL 1024²'s first and second transformer"
  echo "   levels (8192 rows of 640, 2048 of 1280), a cross-attention to_k (154 rows of 2048 -> 1280); ranks 4 and 32"
  for shape in "--rows 8192 --in 640" "--rows 2048 --in 1280" "--rows 154 --in 2048 --out 1280"; do
    for rank in 4 32; do $b lora $shape --rank $rank --device cuda --reps 20; done
  done
} 2>&1 | tee "$log/2-attention.txt"
{
  echo "== ncp-native SDXL 128x128 NCP-DPO step, bf16 weights: defaults (fused-async8 attention, LoRA"
  echo "   on the GEMM chain), then materialized attention, fused-async (4 warps), LoRA on its fused kernels"
  $b $sdxl_step --weights bf16
  NCP_CUDA_ATTENTION=materialized $b $sdxl_step --weights bf16
  NCP_CUDA_ATTENTION=fused-async $b $sdxl_step --weights bf16
  NCP_CUDA_LORA=fused $b $sdxl_step --weights bf16
  echo "== memory: --recompute feedforward, --recompute feedforward,qkv, gradient checkpointing"
  $b $sdxl_step --weights bf16 --recompute feedforward
  $b $sdxl_step --weights bf16 --recompute feedforward,qkv
  $b $sdxl_step --weights bf16 --gradient-checkpointing on
  echo "== the default bf16 step again, one repetition, device time per op kind from events (nothing"
  echo "   synchronised), host time, launches, device idle between ops"
  $b step --config sdxl --latent 128 --pairs 1 --objective dpo --space ncp --device cuda --reps 1 --weights bf16 \
    --profile gpu
  echo "== forward, batch 2, bf16 weights: defaults, then materialized attention"
  $b $sdxl_fwd --weights bf16
  NCP_CUDA_ATTENTION=materialized $b $sdxl_fwd --weights bf16
} 2>&1 | tee "$log/2-ours-sdxl-bf16.txt"
echo "== PyTorch $(python3 -c 'import torch; print(torch.__version__)'), SDXL 128x128, bf16 autocast" | tee "$log/2-torch-sdxl-bf16.txt"
torch_bench --config sdxl --latent 128 --cases forward,ncp --precision bf16 2>&1 | tee -a "$log/2-torch-sdxl-bf16.txt"
{
  echo "== ncp-native SDXL 128x128, fp16 weights (float32 tape, loss scaling): defaults (float attention), recompute,"
  echo "   fused-async8 attention"
  $b $sdxl_step --weights fp16
  $b $sdxl_step --weights fp16 --recompute feedforward,qkv
  NCP_CUDA_ATTENTION=fused-async8 $b $sdxl_step --weights fp16 --recompute feedforward,qkv
} 2>&1 | tee "$log/3-ours-sdxl-fp16.txt"
{
  echo "== ncp-native SDXL 128x128: float32 (TF32 off), then TF32"
  NCP_CUDA_TF32=0 $b $sdxl_fwd; NCP_CUDA_TF32=0 $b $sdxl_step
  $b $sdxl_fwd; $b $sdxl_step
} 2>&1 | tee "$log/4-ours-sdxl-f32.txt"
echo "== PyTorch SDXL 128x128, fp32 and tf32" | tee "$log/4-torch-sdxl-f32.txt"
torch_bench --config sdxl --latent 128 --cases forward,ncp --precision fp32,tf32 2>&1 | tee -a "$log/4-torch-sdxl-f32.txt"
{
  echo "== ncp-native SD1.5 64x64: float32, TF32, bf16 weights (defaults: fused-async8), bf16 + materialized attention"
  NCP_CUDA_TF32=0 $b unet --config sd15 --latent 64 --batch 2 --device cuda --reps 5
  NCP_CUDA_TF32=0 $b $sd15_step
  $b $sd15_step
  $b $sd15_step --weights bf16
  NCP_CUDA_ATTENTION=materialized $b $sd15_step --weights bf16
} 2>&1 | tee "$log/5-ours-sd15.txt"
echo "== PyTorch SD1.5 64x64" | tee "$log/5-torch-sd15.txt"
torch_bench --config sd15 --latent 64 --cases forward,ncp --precision fp32,tf32,bf16 2>&1 | tee -a "$log/5-torch-sd15.txt"
