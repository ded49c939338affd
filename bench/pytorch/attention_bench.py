"""GPU baseline for `ncp_bench attention`: PyTorch's F.scaled_dot_product_attention on one multi-head shape, the
way diffusers' AttnProcessor2_0 calls it under bf16 autocast (q, k, v [B, heads, L, head_dim] in bfloat16; PyTorch
picks its flash kernel there), forward alone and forward + backward, timed on the same GPU as ours.

FLOP convention as ncp_bench's: 4 B H Lq Lk Dh per forward, 2.5 times that per backward. The backward time is
(forward + backward) minus the forward, since autograd has no backward without its forward; ncp_bench's backward
(attention_backward_recompute) recomputes its own forward inside, so the two backward figures are not the same work
and the fair comparison is the sum forward + backward.

Usage (GPU):  python3 bench/pytorch/attention_bench.py --batch 2 --tokens 4096 --heads 10 --head-dim 64
              python3 bench/pytorch/attention_bench.py --shape 4096x10x64 --shape 1024x20x64   (one process)
Smoke (CPU):  /usr/bin/python3 bench/pytorch/attention_bench.py --device cpu --tokens 128 --heads 2 --reps 1
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def attention(q, k, v):
    if hasattr(F, 'scaled_dot_product_attention'):
        return F.scaled_dot_product_attention(q, k, v)
    # torch < 2 (Debian's 1.13 on the CPU, for the smoke run): diffusers' AttnProcessor arithmetic
    w = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
    return w @ v


def timed(fn, reps, device):
    fn()
    if device == 'cuda':
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if device == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(batch, tokens, keys, heads, head_dim, reps, device, dtype_name):
    dtype = torch.bfloat16 if dtype_name == 'bf16' else torch.float32
    g = torch.Generator(device='cpu').manual_seed(0)
    shape_q = (batch, heads, tokens, head_dim)
    shape_k = (batch, heads, keys, head_dim)
    q = torch.randn(shape_q, generator=g).to(device, dtype).requires_grad_()
    k = torch.randn(shape_k, generator=g).to(device, dtype).requires_grad_()
    v = torch.randn(shape_k, generator=g).to(device, dtype).requires_grad_()
    dout = torch.randn(shape_q, generator=g).to(device, dtype)

    def forward():
        with torch.no_grad():
            attention(q, k, v)

    def forward_backward():
        out = attention(q, k, v)
        torch.autograd.grad(out, (q, k, v), dout)

    fwd = timed(forward, reps, device)
    both = timed(forward_backward, reps, device)
    gflop = 4.0 * batch * heads * tokens * keys * head_dim / 1e9
    bwd = max(both - fwd, 1e-9)
    impl = 'sdpa' if hasattr(F, 'scaled_dot_product_attention') else 'math'
    print(json.dumps({
        'bench': 'attention', 'impl': f'torch {torch.__version__} {impl} {dtype_name}',
        'device': torch.cuda.get_device_name() if device == 'cuda' else 'cpu',
        'batch': batch, 'queries': tokens, 'keys': keys, 'heads': heads, 'head_dim': head_dim,
        'forward_ms': round(fwd * 1e3, 3), 'forward_tflops': round(gflop / 1e3 / fwd, 1),
        'forward_backward_ms': round(both * 1e3, 3), 'backward_ms': round(bwd * 1e3, 3),
        'backward_tflops': round(2.5 * gflop / 1e3 / bwd, 1)}), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--tokens', type=int, default=4096)
    p.add_argument('--keys', type=int, default=0, help='default: --tokens')
    p.add_argument('--heads', type=int, default=10)
    p.add_argument('--head-dim', type=int, default=64)
    p.add_argument('--shape', action='append', default=[],
                   help='TOKENSxHEADSxHEAD_DIM, repeatable (one process for several shapes); overrides the three above')
    p.add_argument('--reps', type=int, default=10)
    p.add_argument('--device', default='cuda')
    p.add_argument('--dtype', default='bf16', choices=['bf16', 'fp32'])
    a = p.parse_args()
    shapes = [tuple(int(x) for x in s.split('x')) for s in a.shape] or [(a.tokens, a.heads, a.head_dim)]
    for tokens, heads, head_dim in shapes:
        bench(a.batch, tokens, a.keys or tokens, heads, head_dim, a.reps, a.device, a.dtype)


if __name__ == '__main__':
    main()
