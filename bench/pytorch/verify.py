"""Checks unet.py / objectives.py against the golden vectors diffusers 0.25 produced
(test/fixtures/golden/tiny-sd15 and tiny-sdxl, see test/fixtures/golden/README.md), in float32:
  forward: out.sample and every trace.* (sdxl: with text_embeds / time_ids, trace.add_embedding too);
  lora-forward: the PEFT-layout LoRA at scale 1;
  objectives: dpo.latent and dpo.ncp-mid-prev (also ncp-down-prev) loss, per-row errors, LoRA gradients.
NCP_GOLDEN=<model folder> checks that one folder only.
Exit status 1 when any relative error ||x - ref|| / ||ref|| exceeds its tolerance
(1e-4; 2e-3 for the ncp-*-prev objectives, as the golden README allows)."""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import load_safetensors  # noqa: E402
from unet import UNet2DConditionModel  # noqa: E402
import objectives as obj  # noqa: E402

GOLDEN_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "test", "fixtures", "golden")
MODELS = [os.environ["NCP_GOLDEN"]] if os.environ.get("NCP_GOLDEN") else \
    [os.path.join(GOLDEN_ROOT, m) for m in ("tiny-sd15", "tiny-sdxl")]
GOLDEN = MODELS[0]  # the folder being checked (set by main)
failures = []
worst = {}


def rel(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp(min=1e-30)).item()


def check(group, name, x, ref, tol):
    group = f"{os.path.basename(os.path.normpath(GOLDEN))} {group}"
    r = rel(x.detach(), ref)
    worst[group] = max(worst.get(group, 0.0), r)
    if not r <= tol:
        failures.append(f"{group}: {name} relative error {r:.3e} > {tol:g}")


def build():
    with open(os.path.join(GOLDEN, "unet", "config.json")) as f:
        cfg = json.load(f)
    unet = UNet2DConditionModel(cfg)
    unet.load_base_state_dict(load_safetensors(os.path.join(GOLDEN, "unet", "diffusion_pytorch_model.safetensors")))
    return unet.eval()


def set_lora(unet, tensors, prefix, rank, alpha):
    """Install LoRA weights named `<prefix><module>.lora_A.weight` with scale alpha / rank."""
    mods = {n: m for n, m in unet.named_modules() if hasattr(m, "add_lora")}
    seen = 0
    for name, m in mods.items():
        ka, kb = f"{prefix}{name}.lora_A.weight", f"{prefix}{name}.lora_B.weight"
        if ka not in tensors:
            continue
        m.add_lora(rank, alpha)
        with torch.no_grad():
            m.lora_A.copy_(tensors[ka])
            m.lora_B.copy_(tensors[kb])
        seen += 1
    expected = sum(1 for k in tensors if k.startswith(prefix) and k.endswith(".lora_A.weight"))
    if seen != expected:
        raise ValueError(f"LoRA: installed {seen} modules, file has {expected}")
    for p in unet.parameters():
        p.requires_grad_(False)
    for m in unet.lora_modules().values():
        m.lora_A.requires_grad_(True)
        m.lora_B.requires_grad_(True)


def added_cond(g):
    """SDXL's added_cond_kwargs from a golden file (None where the file has none: SD1.x)."""
    if "in.text_embeds" not in g:
        return None
    return {"text_embeds": g["in.text_embeds"], "time_ids": g["in.time_ids"]}


def check_forward():
    unet = build()
    g = load_safetensors(os.path.join(GOLDEN, "forward.safetensors"))
    trace = {}
    with torch.no_grad():
        out = unet(g["in.sample"], g["in.timestep"], g["in.encoder_hidden_states"], added_cond_kwargs=added_cond(g),
                   trace=trace)
    check("forward", "out.sample", out, g["out.sample"], 1e-4)
    for k, v in trace.items():
        check("forward.trace", k, v, g[f"trace.{k}"], 1e-4)
    golden_traces = {k[len("trace."):] for k in g if k.startswith("trace.")}
    if golden_traces - set(trace):
        failures.append(f"forward: golden traces not produced: {sorted(golden_traces - set(trace))}")
    return rel(out, g["out.sample"])


def check_lora_forward():
    unet = build()
    g = load_safetensors(os.path.join(GOLDEN, "lora-forward.safetensors"))
    lora = load_safetensors(os.path.join(GOLDEN, "lora", "peft.safetensors"))
    with open(os.path.join(GOLDEN, "lora", "lora.json")) as f:
        rank = json.load(f)["rank"]
    set_lora(unet, lora, "unet.", rank, rank)  # PEFT layout: B already holds alpha / r
    with torch.no_grad():
        out = unet(g["in.sample"], g["in.timestep"], g["in.encoder_hidden_states"], added_cond_kwargs=added_cond(g))
    check("lora-forward", "out.sample", out, g["out.sample"], 1e-4)


def objective_inputs(g):
    """The objectives case's rows [w_0..w_P-1, l_0..l_P-1]: noise, step noise, timestep, context and SDXL's added
    conditions shared within a pair; returns x0, eps, z, t, ctx, added_cond_kwargs, alphas_cumprod, x_t."""
    x0 = torch.cat([g["in.x0_w"], g["in.x0_l"]])
    eps = torch.cat([g["in.noise"]] * 2)
    z = torch.cat([g["in.variance_noise"]] * 2)
    t = torch.cat([g["in.timestep"]] * 2)
    ctx = torch.cat([g["in.encoder_hidden_states"]] * 2)
    ack = added_cond(g)
    if ack is not None:  # one per pair, like the context
        ack = {k: torch.cat([v] * 2) for k, v in ack.items()}
    ac = g["in.alphas_cumprod"]
    ac_t = ac[t][:, None, None, None]
    x_t = ac_t.sqrt() * x0 + (1 - ac_t).sqrt() * eps
    return x0, eps, z, t, ctx, ack, ac, x_t


def check_objectives():
    g = load_safetensors(os.path.join(GOLDEN, "objectives.safetensors"))
    with open(os.path.join(GOLDEN, "objectives.json")) as f:
        meta = json.load(f)
    rank, alpha = meta["lora"]["rank"], meta["lora"]["alpha"]
    x0, eps, z, t, ctx, ack, ac, x_t = objective_inputs(g)
    for space, layer in (("latent", None), ("ncp-mid-prev", "mid"), ("ncp-down-prev", "down")):
        unet = build()
        set_lora(unet, g, "lora.", rank, alpha)
        beta = meta["betas"][space]
        pol, ref = obj.errors(unet, "latent" if layer is None else "ncp", x_t, t, ctx, eps, ac=ac, z=z, eps=eps,
                              layer=layer or "mid", added_cond_kwargs=ack)
        loss = obj.dpo_loss(pol, ref, beta)
        loss.backward()
        tol = 1e-4 if space == "latent" else 2e-3
        grp = f"dpo.{space}"
        check(grp, "loss", loss.reshape(1), g[f"out.dpo.{space}.loss"], tol)
        check(grp, "policy_losses", pol, g[f"out.dpo.{space}.policy_losses"], tol)
        check(grp, "ref_losses", ref, g[f"out.dpo.{space}.ref_losses"], tol)
        for name, m in unet.lora_modules().items():
            check(grp + ".grad", name + ".lora_A", m.lora_A.grad, g[f"grad.dpo.{space}.{name}.lora_A.weight"], tol)
            check(grp + ".grad", name + ".lora_B", m.lora_B.grad, g[f"grad.dpo.{space}.{name}.lora_B.weight"], tol)


def main():
    global GOLDEN
    torch.set_num_threads(2)
    for GOLDEN in MODELS:
        check_forward()
        check_lora_forward()
        check_objectives()
    for k, v in worst.items():
        print(f"{k:38s} worst relative error {v:.2e}")
    if failures:
        print("FAIL\n" + "\n".join(failures[:20]))
        sys.exit(1)
    print("OK: all within tolerance")


if __name__ == "__main__":
    main()
