"""PyTorch baseline for ncp-native's step-time target (issue 4): SD1.5 U-Net architecture on random float32
weights, one preference pair (2 rows, latent 4x32x32, 77 tokens x 768), LoRA r4 / alpha 4 on every
attention's to_q/to_k/to_v/to_out.0, one full optimiser step as METHOD.md sections 1-4 describe:

  latent  policy forward (LoRA on, autograd), reference forward (LoRA off, no_grad), per-row MSE to eps,
          DPO loss, backward, clip_grad_norm_(LoRA, 1.0), AdamW step.
  ncp     (layer mid, timestep prev) as latent, but the errors are taken in E-space: x_pred = DDPM step of
          e_pol (autograd), x_true / x_refpred (no grad); E = base U-Net down to the mid block at
          p = max(t-1, 0); E(x_pred) with autograd, E(x_true) and E(x_refpred) batched under no_grad.
  forward plain U-Net forward, batch 2, no grad, LoRA off (sanity figure).

Every case runs in its own process (the parent re-runs this file with --case) so that ru_maxrss is that
case's own peak. One warm-up step, then `--steps` timed steps; prints one JSON line per case.

--allocators: this VM faults pages in slowly (see bench/README.md: ~0.3 GB/s), and glibc malloc hands every
tensor above its mmap threshold back to the kernel on free, so stock PyTorch re-faults most activations on
every op. "default" is stock PyTorch; "tcmalloc" preloads Debian's libtcmalloc_minimal (the usual PyTorch
CPU tuning), which keeps freed memory; "glibc-nommap" keeps glibc but disables mmap/trim through its
environment tunables. Each case runs once per allocator.
Usage: /usr/bin/python3 bench/pytorch/step_bench.py [--cases latent,ncp,forward] [--allocators tcmalloc,default]
       [--steps 3] [--threads 2]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unet import UNet2DConditionModel, sd15_config, lora_disabled  # noqa: E402
import objectives as obj  # noqa: E402

ALLOCATORS = {
    "default": {},
    "tcmalloc": {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"},
    "glibc-nommap": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)},
}
BETA = 2500.0  # the reference script's beta_dpo (METHOD.md section 6); has no effect on time


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 ** 2)  # ru_maxrss is KiB on Linux


def make_pair(gen, latent):
    """One pair: rows [w, l] share prompt, timestep, noise and step noise (METHOD.md section 2)."""
    x0 = torch.randn(2, 4, latent, latent, generator=gen)
    eps = torch.randn(1, 4, latent, latent, generator=gen).repeat(2, 1, 1, 1)
    z = torch.randn(1, 4, latent, latent, generator=gen).repeat(2, 1, 1, 1)
    t = torch.randint(1, 1000, (1,), generator=gen).repeat(2)  # t >= 1: at t = 0 the DDPM step ignores e
    ctx = torch.randn(1, 77, 768, generator=gen).repeat(2, 1, 1)
    return x0, eps, z, t, ctx


def run_case(case, steps, latent):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sd15_config())
    n_params = sum(p.numel() for p in unet.parameters())
    lora = unet.add_lora(rank=4, alpha=4.0, b_std=1e-3, seed=0)
    n_lora = sum(p.numel() for p in lora)
    rss_model = peak_rss_gib()
    opt = torch.optim.AdamW(lora, lr=5e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    ac = obj.alphas_cumprod()
    gen = torch.Generator().manual_seed(1)
    info = {}

    def step():
        x0, eps, z, t, ctx = make_pair(gen, latent)
        if case == "forward":
            with torch.no_grad(), lora_disabled(unet):
                unet(x0, t, ctx)
            return
        ac_t = ac[t][:, None, None, None]
        x_t = ac_t.sqrt() * x0 + (1 - ac_t).sqrt() * eps
        opt.zero_grad(set_to_none=True)
        pol, ref = obj.errors(unet, case, x_t, t, ctx, eps, ac=ac, z=z, eps=eps, layer="mid")
        loss = obj.dpo_loss(pol, ref, BETA)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(lora, 1.0)
        opt.step()
        info.update(loss=loss.item(), grad_norm=gnorm.item())

    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        step()
        dt = time.perf_counter() - t0
        if i > 0:  # step 0 is the warm-up
            times.append(dt)
    out = {
        "space": {"latent": "latent-dpo", "ncp": "ncp-dpo-mid-prev", "forward": "unet-forward-nograd"}[case],
        "median_s": round(statistics.median(times), 3), "best_s": round(min(times), 3),
        "peak_rss_gib": round(peak_rss_gib(), 3), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "times_s": [round(x, 3) for x in times], "rss_after_build_gib": round(rss_model, 3),
        "unet_params": n_params, "lora_params": n_lora, "latent": latent, "batch": 2,
        "allocator": os.environ.get("NCP_BENCH_ALLOCATOR", "default"),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }
    if info:
        if not (info["loss"] == info["loss"] and info["grad_norm"] == info["grad_norm"]):
            raise RuntimeError(f"non-finite loss or grad norm: {info}")
        out.update({k: round(v, 6) for k, v in info.items()})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="latent,ncp,forward")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # one case in this process (used by the parent)
    ap.add_argument("--allocators", default="tcmalloc,default")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latent", type=int, default=32)
    a = ap.parse_args()
    if a.case:
        torch.set_num_threads(a.threads)
        print(json.dumps(run_case(a.case, a.steps, a.latent)), flush=True)
        return
    cases, allocs = a.cases.split(","), a.allocators.split(",")
    for case in cases:
        if case not in ("latent", "ncp", "forward"):
            sys.exit(f"unknown case {case!r}: use latent, ncp, forward")
    for alloc in allocs:
        if alloc not in ALLOCATORS:
            sys.exit(f"unknown allocator {alloc!r}: use {', '.join(ALLOCATORS)}")
        lib = ALLOCATORS[alloc].get("LD_PRELOAD")
        if lib and not os.path.exists(lib):
            sys.exit(f"{lib} missing: apt-get install -y libtcmalloc-minimal4")
    for alloc in allocs:
        env = dict(os.environ, NCP_BENCH_ALLOCATOR=alloc, **ALLOCATORS[alloc])
        for case in cases:
            subprocess.run([sys.executable, os.path.abspath(__file__), "--case", case, "--steps", str(a.steps),
                            "--threads", str(a.threads), "--latent", str(a.latent)], check=True, env=env)


if __name__ == "__main__":
    main()
