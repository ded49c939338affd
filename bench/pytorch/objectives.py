"""METHOD.md sections 1-4 in PyTorch: DDPM schedule and step, per-row errors in latent and NCP space,
and the DPO loss. Shared by verify.py (checked against the golden objectives) and step_bench.py (timed)."""
import torch
import torch.nn.functional as F

from unet import lora_disabled


def alphas_cumprod(T=1000, beta_start=0.00085, beta_end=0.012):
    """scaled_linear schedule, computed in float64 like diffusers' DDPMScheduler then cast."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def _col(v):
    return v[:, None, None, None]


def x0_from_eps(x_t, e, ac_t):
    return (x_t - (1 - ac_t).sqrt() * e) / ac_t.sqrt()


def ddpm_step(e, x_t, t, ac, z):
    """One DDPM step t -> p = max(t-1, 0) ("fixed_small" variance); returns step(e), which is x_t
    exactly where t == 0."""
    p = (t - 1).clamp(min=0)
    ac_t, ac_p = _col(ac[t]), _col(ac[p])
    beta = 1 - ac_t / ac_p
    mean = ac_p.sqrt() * beta / (1 - ac_t) * x0_from_eps(x_t, e, ac_t) \
        + (ac_t / ac_p).sqrt() * (1 - ac_p) / (1 - ac_t) * x_t
    var = ((1 - ac_p) / (1 - ac_t) * beta).clamp(min=1e-20)
    std = torch.where(_col(t) == 0, torch.zeros_like(var), var.sqrt())
    return mean + std * z


def row_mse(a, b):
    """Per-row mean squared error, always in float32 (under bf16 autocast the U-Net returns bf16, and
    diffusers' training scripts take the loss on .float() predictions); a no-op cast for float32 input."""
    return ((a.float() - b.float()) ** 2).mean(dim=(1, 2, 3))


def dpo_loss(pol, ref, beta):
    """pol, ref: per-row errors on rows [w_0..w_{P-1}, l_0..l_{P-1}]."""
    P = pol.shape[0] // 2
    logits = (ref[:P] - ref[P:]) - (pol[:P] - pol[P:])
    return -F.logsigmoid(beta * logits).mean()


def errors(unet, space, x_t, t, ctx, target, ac=None, z=None, eps=None, layer="mid", added_cond_kwargs=None):
    """Policy (autograd) and reference (no grad) per-row errors for one batch.
    added_cond_kwargs: SDXL's {"text_embeds", "time_ids"} per row (None for SD1.x); duplicated like ctx
    for the batched E call.
    space "latent": mse against target. space "ncp": METHOD.md section 3, timestep "prev":
    E = base U-Net down to `layer` at p = max(t-1, 0); E(x_pred) keeps the graph into e_pol (E's
    weights are frozen), E(x_true) and E(x_refpred) run batched under no_grad."""
    ack = added_cond_kwargs
    e_pol = unet(x_t, t, ctx, added_cond_kwargs=ack)
    with torch.no_grad(), lora_disabled(unet):
        e_ref = unet(x_t, t, ctx, added_cond_kwargs=ack)
    if space == "latent":
        return row_mse(e_pol, target), row_mse(e_ref, target)
    if space != "ncp":
        raise ValueError(f"space must be latent or ncp, got {space!r}")
    p = (t - 1).clamp(min=0)
    x_pred = ddpm_step(e_pol, x_t, t, ac, z)
    with torch.no_grad():
        x_true = ddpm_step(eps, x_t, t, ac, z)
        x_refpred = ddpm_step(e_ref, x_t, t, ac, z)
    with lora_disabled(unet):
        f_pred = unet.encode(x_pred, p, ctx, layer, added_cond_kwargs=ack)
        ack2 = None if ack is None else {k: torch.cat([v, v]) for k, v in ack.items()}
        with torch.no_grad():
            f_other = unet.encode(torch.cat([x_true, x_refpred]), torch.cat([p, p]), torch.cat([ctx, ctx]), layer,
                                  added_cond_kwargs=ack2)
    n = x_t.shape[0]
    f_true, f_refpred = f_other[:n], f_other[n:]
    return row_mse(f_pred, f_true), row_mse(f_refpred, f_true)
