"""GPU baseline: the step of step_bench.py (one preference pair, LoRA r4 / alpha 4 on every attention's
to_q/to_k/to_v/to_out.0, DPO beta 2500, clip_grad_norm_(LoRA, 1.0), AdamW) timed with PyTorch on CUDA, for
the SD1.5 or SDXL U-Net (unet.py, diffusers 0.25's architecture and state-dict names; random weights).

  forward  plain U-Net forward, batch 2, no grad, LoRA off
  latent   policy forward (LoRA on, autograd), reference forward (LoRA off, no_grad), per-row MSE to eps,
           DPO, backward, clip, AdamW
  ncp      as latent, errors in E-space (objectives.errors: layer "mid", timestep prev)

Precisions (each runs the same cases):
  fp32  float32 weights, torch.backends.cuda.matmul.allow_tf32 = cudnn.allow_tf32 = False
  tf32  float32 weights, both TF32 switches True
  bf16  frozen U-Net weights cast to bfloat16 (diffusers' train scripts' weight_dtype), LoRA parameters in
        float32, forward under torch.autocast(dtype=bfloat16); per-row errors and the loss in float32
        (TF32 switches off).
Attention runs F.scaled_dot_product_attention where torch >= 2 has it (diffusers' AttnProcessor2_0).
Inputs: 2 rows (w, l) sharing the prompt (77 tokens x cross_attention_dim), timestep, noise, step noise;
SDXL adds text_embeds [2, pooled] (one random pooled embedding per pair) and time_ids
[8L, 8L, 0, 0, 8L, 8L] per row (L = latent side; the original size / crop / target size in pixels).
One warm-up step, then --steps timed steps (torch.cuda.synchronize() before each clock read). The peak
memory counters are reset (after empty_cache) before the warm-up; the figures include the weights.
Prints one JSON line per (precision, case); a case that runs out of memory prints a line with "error".

Usage (GPU):  python bench/pytorch/gpu_step_bench.py --config sdxl --cases forward,ncp --precision fp32,tf32,bf16
Smoke (CPU):  /usr/bin/python3 bench/pytorch/gpu_step_bench.py --config tiny --device cpu --latent 16 \
                  --cases forward,latent,ncp --precision fp32 --steps 1
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from unet import UNet2DConditionModel, sd15_config, sdxl_config, lora_disabled, LoRALinear  # noqa: E402
import objectives as obj  # noqa: E402

BETA = 2500.0
TINY_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "test", "fixtures", "golden",
                           "tiny-sdxl", "unet", "config.json")
DEFAULT_LATENT = {"sd15": 64, "sdxl": 128, "tiny": 16}
CASE_NAMES = {"latent": "latent-dpo", "ncp": "ncp-dpo-mid-prev", "forward": "unet-forward-nograd"}
GIB = 1024 ** 3


def load_config(name):
    if name == "sd15":
        return sd15_config()
    if name == "sdxl":
        return sdxl_config()
    if name == "tiny":
        with open(TINY_CONFIG) as f:
            return json.load(f)
    raise SystemExit(f"unknown --config {name!r}: use sd15, sdxl, tiny")


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def build(cfg, dev):
    """Random-weight U-Net on `dev` (built there directly where torch >= 2 allows), LoRA on in float32."""
    torch.manual_seed(0)
    if dev.type != "cpu" and hasattr(torch.device, "__enter__"):
        with dev:
            unet = UNet2DConditionModel(cfg)
    else:
        unet = UNet2DConditionModel(cfg).to(dev)
    lora = unet.add_lora(rank=4, alpha=4.0, b_std=1e-3, seed=0)  # A ~ N(0, 1/r^2), B ~ N(0, 1e-3), as step_bench
    return unet, lora


def cast_base(unet, dtype):
    """Frozen U-Net weights to `dtype`; LoRA A/B stay float32."""
    lora_ids = {id(p) for m in unet.modules() if isinstance(m, LoRALinear) and m.lora_A is not None
                for p in (m.lora_A, m.lora_B)}
    for p in unet.parameters():
        if id(p) not in lora_ids:
            p.data = p.data.to(dtype)
    for b in unet.buffers():
        if b.is_floating_point():
            b.data = b.data.to(dtype)


def make_batches(n, cfg, latent, dev):
    """n pairs, generated up front (on the CPU, seeded) and moved to `dev` before any timing."""
    gen = torch.Generator().manual_seed(1)
    ctx_dim = cfg["cross_attention_dim"]
    text_time = cfg.get("addition_embed_type") == "text_time"
    pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"] if text_time else 0
    out = []
    for _ in range(n):
        x0 = torch.randn(2, 4, latent, latent, generator=gen)
        eps = torch.randn(1, 4, latent, latent, generator=gen).repeat(2, 1, 1, 1)
        z = torch.randn(1, 4, latent, latent, generator=gen).repeat(2, 1, 1, 1)
        t = torch.randint(1, 1000, (1,), generator=gen).repeat(2)
        ctx = torch.randn(1, 77, ctx_dim, generator=gen).repeat(2, 1, 1)
        b = {"x0": x0, "eps": eps, "z": z, "t": t, "ctx": ctx}
        if text_time:
            b["text_embeds"] = torch.randn(1, pooled, generator=gen).repeat(2, 1)
            px = 8.0 * latent
            b["time_ids"] = torch.tensor([[px, px, 0.0, 0.0, px, px]]).repeat(2, 1)
        out.append({k: v.to(dev) for k, v in b.items()})
    return out


def set_precision(prec, dev):
    if dev.type == "cuda":
        on = prec == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


def autocast_ctx(prec, dev):
    if prec == "bf16":
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=dev.type, enabled=False)


def run_case(unet, lora, lora_init, cfg, case, prec, steps, latent, dev):
    with torch.no_grad():
        for p, p0 in zip(lora, lora_init):
            p.copy_(p0)
        for p in lora:
            p.grad = None
    opt = torch.optim.AdamW(lora, lr=5e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    ac = obj.alphas_cumprod().to(dev)
    batches = make_batches(steps + 1, cfg, latent, dev)
    info = {}

    def step(b):
        ack = {"text_embeds": b["text_embeds"], "time_ids": b["time_ids"]} if "time_ids" in b else None
        if case == "forward":
            with torch.no_grad(), lora_disabled(unet), autocast_ctx(prec, dev):
                unet(b["x0"], b["t"], b["ctx"], added_cond_kwargs=ack)
            return
        t, eps = b["t"], b["eps"]
        ac_t = ac[t][:, None, None, None]
        x_t = ac_t.sqrt() * b["x0"] + (1 - ac_t).sqrt() * eps
        opt.zero_grad(set_to_none=True)
        with autocast_ctx(prec, dev):
            pol, ref = obj.errors(unet, case, x_t, t, b["ctx"], eps, ac=ac, z=b["z"], eps=eps, layer="mid",
                                  added_cond_kwargs=ack)
        loss = obj.dpo_loss(pol.float(), ref.float(), BETA)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(lora, 1.0)
        opt.step()
        info.update(loss=loss.item(), grad_norm=gnorm.item())

    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i, b in enumerate(batches):
        sync(dev)
        t0 = time.perf_counter()
        step(b)
        sync(dev)
        dt = time.perf_counter() - t0
        if i > 0:  # step 0 is the warm-up
            times.append(dt)
    out = {"case": CASE_NAMES[case], "precision": prec,
           "median_s": round(statistics.median(times), 4), "best_s": round(min(times), 4),
           "times_s": [round(x, 4) for x in times]}
    if dev.type == "cuda":
        out["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(dev) / GIB, 3)
        out["max_memory_reserved_gib"] = round(torch.cuda.max_memory_reserved(dev) / GIB, 3)
    if info:
        if not all(v == v and abs(v) != float("inf") for v in info.values()):
            raise RuntimeError(f"non-finite loss or grad norm: {info}")
        out.update({k: round(v, 6) for k, v in info.items()})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="sdxl", help="sd15 | sdxl | tiny (test/fixtures/golden/tiny-sdxl)")
    ap.add_argument("--latent", type=int, default=None, help="latent side (default 64 sd15, 128 sdxl, 16 tiny)")
    ap.add_argument("--cases", default="forward,latent,ncp")
    ap.add_argument("--precision", default="fp32,tf32,bf16")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    cfg = load_config(a.config)
    latent = a.latent or DEFAULT_LATENT[a.config]
    cases, precs = a.cases.split(","), a.precision.split(",")
    for c in cases:
        if c not in CASE_NAMES:
            sys.exit(f"unknown case {c!r}: use forward, latent, ncp")
    for p in precs:
        if p not in ("fp32", "tf32", "bf16"):
            sys.exit(f"unknown precision {p!r}: use fp32, tf32, bf16")
    dev = torch.device(a.device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"

    t0 = time.perf_counter()
    unet, lora = build(cfg, dev)
    sync(dev)
    build_s = time.perf_counter() - t0
    lora_init = [p.detach().clone() for p in lora]
    n_params = sum(p.numel() for p in unet.parameters()) - sum(p.numel() for p in lora)
    n_lora = sum(p.numel() for p in lora)
    base_dtype = torch.float32
    common = {"config": a.config, "latent": latent, "batch": 2, "steps": a.steps, "torch": torch.__version__,
              "cuda": torch.version.cuda, "device": dev_name, "sdpa": hasattr(torch.nn.functional,
                                                                             "scaled_dot_product_attention"),
              "unet_params": n_params, "lora_params": n_lora, "build_s": round(build_s, 2)}
    for prec in precs:
        want = torch.bfloat16 if prec == "bf16" else torch.float32
        if want != base_dtype:
            if want == torch.float32:  # back from bf16: rebuild (the cast lost the float32 weights)
                del unet, lora
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                unet, lora = build(cfg, dev)
            else:
                cast_base(unet, want)
            base_dtype = want
        set_precision(prec, dev)
        for case in cases:
            try:
                out = run_case(unet, lora, lora_init, cfg, case, prec, a.steps, latent, dev)
            except RuntimeError as e:
                if "out of memory" not in str(e):
                    raise
                out = {"case": CASE_NAMES[case], "precision": prec, "error": "out of memory",
                       "detail": str(e).split("\n")[0][:300]}
                if dev.type == "cuda":
                    out["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(dev) / GIB, 3)
                    out["max_memory_reserved_gib"] = round(torch.cuda.max_memory_reserved(dev) / GIB, 3)
                    for p in lora:
                        p.grad = None
                    torch.cuda.empty_cache()
            out.update(common)
            cuda = dev.type == "cuda"
            out.update({"tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if cuda else None,
                        "tf32_cudnn": torch.backends.cudnn.allow_tf32 if cuda else None,
                        "base_weight_dtype": str(base_dtype).replace("torch.", "")})
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
