"""What does PyTorch's own bf16 recipe cost on the golden cases? An independent yardstick for the engine's
bf16 "mixed precision" mode.

For tiny-sd15 and tiny-sdxl (test/fixtures/golden) this runs the checks of verify.py -- forward (out.sample
and every trace.*), dpo.latent, dpo.ncp-mid-prev, dpo.ncp-down-prev (loss, policy_losses, ref_losses and the
gradient of every LoRA tensor) -- and reports, per case, the worst per-tensor relative error
||x - golden|| / ||golden|| (golden = diffusers in float64) under these precisions:

  fp32              the float32 port itself (what verify.py gets)
  bf16-weights      every base U-Net parameter rounded to bf16 and stored back as float32
                    (w.to(bfloat16).float()), no autocast: the cost of the weight rounding alone
  autocast          base U-Net parameters cast to bfloat16, LoRA A/B in float32, U-Net calls under
                    torch.autocast("cpu", bfloat16): diffusers' training-script recipe (weight_dtype bf16 +
                    mixed_precision bf16); per-row errors and the DPO loss in float32 (objectives.row_mse)
  autocast-cudalist as autocast, but group_norm / layer_norm / softmax forced to float32 as CUDA's autocast
                    op list does (CPU autocast in torch 1.13 leaves them in bf16); an emulation, not CUDA

Inputs are float32 (autocast casts at conv_in / linear). The setup (LoRA rank/alpha, betas, inputs, golden
tensor names) is verify.py's, imported from it. Run: /usr/bin/python3 bench/pytorch/bf16_reference.py
"""
import contextlib
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import verify as V  # noqa: E402
import objectives as obj  # noqa: E402
from safetensors_io import load_safetensors  # noqa: E402

VARIANTS = ("fp32", "bf16-weights", "autocast", "autocast-cudalist")
SPACES = (("latent", None), ("ncp-mid-prev", "mid"), ("ncp-down-prev", "down"))


def lora_param_ids(unet):
    return {id(p) for m in unet.lora_modules().values() for p in (m.lora_A, m.lora_B)}


def prepare(unet, variant):
    """Apply the variant's weight treatment to the base parameters (LoRA A/B stay float32)."""
    skip = lora_param_ids(unet)
    with torch.no_grad():
        for p in unet.parameters():
            if id(p) in skip:
                continue
            if variant == "bf16-weights":
                p.copy_(p.to(torch.bfloat16).float())
            elif variant.startswith("autocast"):
                p.data = p.data.to(torch.bfloat16)
    return unet


@contextlib.contextmanager
def fp32_norms_softmax():
    """CUDA autocast's float32 policy for the ops the U-Net uses that CPU autocast leaves in bf16."""
    def f32(fn):
        def wrapped(*a, **k):
            a = [x.float() if torch.is_tensor(x) and x.is_floating_point() else x for x in a]
            k = {n: (x.float() if torch.is_tensor(x) and x.is_floating_point() else x) for n, x in k.items()}
            with torch.autocast("cpu", enabled=False):
                return fn(*a, **k)
        return wrapped
    saved = F.group_norm, F.layer_norm, torch.Tensor.softmax
    F.group_norm, F.layer_norm, torch.Tensor.softmax = f32(F.group_norm), f32(F.layer_norm), f32(torch.Tensor.softmax)
    try:
        yield
    finally:
        F.group_norm, F.layer_norm, torch.Tensor.softmax = saved


def precision(variant):
    stack = contextlib.ExitStack()
    if variant.startswith("autocast"):
        stack.enter_context(torch.autocast(device_type="cpu", dtype=torch.bfloat16))
    if variant == "autocast-cudalist":
        stack.enter_context(fp32_norms_softmax())
    return stack


def worst(pairs):
    """pairs: [(name, x, golden)] -> (worst rel err, its name, worst over the non-gradient tensors)."""
    errs = [(V.rel(x.detach(), ref), name) for name, x, ref in pairs]
    return max(errs) + (max(e for e, n in errs if not n.startswith("grad")),)


def forward_case(variant):
    g = load_safetensors(os.path.join(V.GOLDEN, "forward.safetensors"))
    unet = prepare(V.build(), variant)
    trace = {}
    with torch.no_grad(), precision(variant):
        out = unet(g["in.sample"], g["in.timestep"], g["in.encoder_hidden_states"],
                   added_cond_kwargs=V.added_cond(g), trace=trace)
    pairs = [("out.sample", out, g["out.sample"])] + [(f"trace.{k}", v, g[f"trace.{k}"]) for k, v in trace.items()]
    return {"forward out.sample": worst(pairs[:1]), "forward +traces": worst(pairs)}


def objective_cases(variant):
    import json
    g = load_safetensors(os.path.join(V.GOLDEN, "objectives.safetensors"))
    with open(os.path.join(V.GOLDEN, "objectives.json")) as f:
        meta = json.load(f)
    res = {}
    need = ["in.x0_w", "in.x0_l", "in.noise", "in.variance_noise", "in.timestep", "in.encoder_hidden_states",
            "in.alphas_cumprod"]
    if [k for k in need if k not in g]:
        print(f"{os.path.basename(V.GOLDEN)}: objectives inputs missing {[k for k in need if k not in g]}; skipped")
        return res
    rank, alpha = meta["lora"]["rank"], meta["lora"]["alpha"]
    x0, eps, z, t, ctx, ack, ac, x_t = V.objective_inputs(g)
    for space, layer in SPACES:
        if f"out.dpo.{space}.loss" not in g:
            print(f"{os.path.basename(V.GOLDEN)}: no golden out.dpo.{space}.*; skipped")
            continue
        unet = V.build()
        V.set_lora(unet, g, "lora.", rank, alpha)
        prepare(unet, variant)
        with precision(variant):
            pol, ref = obj.errors(unet, "latent" if layer is None else "ncp", x_t, t, ctx, eps, ac=ac, z=z, eps=eps,
                                  layer=layer or "mid", added_cond_kwargs=ack)
        loss = obj.dpo_loss(pol.float(), ref.float(), meta["betas"][space])
        loss.backward()
        pairs = [("loss", loss.reshape(1), g[f"out.dpo.{space}.loss"]),
                 ("policy_losses", pol, g[f"out.dpo.{space}.policy_losses"]),
                 ("ref_losses", ref, g[f"out.dpo.{space}.ref_losses"])]
        for name, m in unet.lora_modules().items():
            for ab in ("A", "B"):
                pairs.append((f"grad {name}.lora_{ab}", getattr(m, f"lora_{ab}").grad,
                              g[f"grad.dpo.{space}.{name}.lora_{ab}.weight"]))
        res[f"dpo.{space}"] = worst(pairs)
    return res


def main():
    torch.set_num_threads(2)
    rows = {}  # (model, case) -> {variant: (err, tensor)}
    for V.GOLDEN in V.MODELS:
        model = os.path.basename(os.path.normpath(V.GOLDEN))
        for variant in VARIANTS:
            for case, r in {**forward_case(variant), **objective_cases(variant)}.items():
                rows.setdefault((model, case), {})[variant] = r
    print(f"torch {torch.__version__}, CPU. Worst per-tensor relative error ||x - golden|| / ||golden|| per case.")
    print("CPU autocast (torch 1.13) runs conv/linear/(bad)bmm in bf16 like CUDA, but also keeps group_norm, "
          "layer_norm and softmax in bf16 (CUDA's autocast runs those in float32); autocast-cudalist emulates CUDA's "
          "choice for those three ops.\n")
    print(f"| model | case | {' | '.join(VARIANTS)} |")
    print("|---|---|" + "---|" * len(VARIANTS))
    for (model, case), r in rows.items():
        print(f"| {model} | {case} | " + " | ".join(f"{r[v][0]:.2e}" for v in VARIANTS) + " |")
    print("\nper case and variant: worst over loss / policy_losses / ref_losses (forward: outputs), worst tensor:")
    for (model, case), r in rows.items():
        print(f"  {model} {case}:")
        for v in VARIANTS:
            print(f"    {v:17s} {r[v][2]:.2e}  {r[v][1]}")


if __name__ == "__main__":
    main()
