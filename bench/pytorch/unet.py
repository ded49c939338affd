"""Plain-PyTorch re-implementation of diffusers 0.25's UNet2DConditionModel (the SD1.x / SD2.x / SDXL shape:
CrossAttnDownBlock2D / DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D / CrossAttnUpBlock2D, per-level head
counts and transformer depths, linear proj_in/out, SDXL's addition_embed_type "text_time"), with
diffusers' state-dict names so `diffusion_pytorch_model.safetensors` loads as is, and PEFT-style LoRA on
the attention projections.

It exists only to time a PyTorch step beside ncp-native on a machine where diffusers cannot be installed;
bench/pytorch/verify.py checks it against the golden vectors that diffusers itself produced.
Config features outside that shape (class embeddings, other addition embeddings, other block types, ...)
raise instead of being silently ignored.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def sd15_config():
    """stable-diffusion-v1-5/unet/config.json, the fields this module reads."""
    return {
        "in_channels": 4, "out_channels": 4, "sample_size": 64,
        "block_out_channels": [320, 640, 1280, 1280],
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "layers_per_block": 2, "attention_head_dim": 8, "num_attention_heads": None,
        "cross_attention_dim": 768, "norm_num_groups": 32, "norm_eps": 1e-5,
        "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1, "mid_block_scale_factor": 1,
        "act_fn": "silu", "use_linear_projection": False, "transformer_layers_per_block": 1,
        "conv_in_kernel": 3, "conv_out_kernel": 3, "time_embedding_type": "positional",
    }


def sdxl_config():
    """stable-diffusion-xl-base-1.0/unet/config.json, the fields this module reads (same architecture as
    native/model/unet_presets.cpp "sdxl"; attention_head_dim is read as the head count, as diffusers does,
    so 5/10/20 heads of 64 channels)."""
    return {
        "in_channels": 4, "out_channels": 4, "sample_size": 128,
        "block_out_channels": [320, 640, 1280],
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "layers_per_block": 2, "attention_head_dim": [5, 10, 20], "num_attention_heads": None,
        "cross_attention_dim": 2048, "norm_num_groups": 32, "norm_eps": 1e-5,
        "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1, "mid_block_scale_factor": 1,
        "act_fn": "silu", "use_linear_projection": True, "transformer_layers_per_block": [1, 2, 10],
        "conv_in_kernel": 3, "conv_out_kernel": 3, "time_embedding_type": "positional",
        "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
        "upcast_attention": None,
    }


# ----------------------------------------------------------------------------------------------- LoRA

class LoRALinear(nn.Linear):
    """nn.Linear (so `to_q.weight` keeps diffusers' name) plus an optional PEFT LoRA:
    y = W x + b + (alpha / r) * B (A x), A: [r, in], B: [out, r]. `lora_enabled` False gives the base
    layer exactly; that is how the reference model and the NCP encoder reuse the policy's weights."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__(in_features, out_features, bias=bias)
        self.lora_A = None
        self.lora_B = None
        self.lora_scale = 0.0
        self.lora_enabled = False

    def add_lora(self, rank, alpha, b_std=1e-3, generator=None):
        # A ~ N(0, 1/r) is PEFT's "gaussian" init; B is small but not zero (PEFT uses B = 0) so that the
        # policy differs from the reference and every gradient in the benchmark is a real one.
        dev, dt = self.weight.device, self.weight.dtype
        self.lora_A = nn.Parameter(torch.randn(rank, self.in_features, generator=generator, dtype=dt).to(dev) / rank)
        self.lora_B = nn.Parameter(torch.randn(self.out_features, rank, generator=generator, dtype=dt).to(dev) * b_std)
        self.lora_scale = alpha / rank
        self.lora_enabled = True

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if self.lora_enabled and self.lora_A is not None:
            y = y + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.lora_scale
        return y


# ------------------------------------------------------------------------------------------ attention

_HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


class Attention(nn.Module):
    """diffusers.models.attention_processor.Attention: q/k/v without bias, to_out.0 with bias,
    softmax(q k^T * dh^-0.5) v per head. With torch >= 2 it runs F.scaled_dot_product_attention, as
    diffusers' default AttnProcessor2_0 does; on torch 1.x the explicit AttnProcessor math (baddbmm,
    softmax, bmm). `use_sdpa` (class attribute) can switch the fused path off."""

    use_sdpa = _HAS_SDPA

    def __init__(self, query_dim, context_dim, heads, dim_head):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.to_q = LoRALinear(query_dim, inner, bias=False)
        self.to_k = LoRALinear(context_dim, inner, bias=False)
        self.to_v = LoRALinear(context_dim, inner, bias=False)
        self.to_out = nn.ModuleList([LoRALinear(inner, query_dim, bias=True), nn.Dropout(0.0)])

    def _split(self, x):
        b, n, c = x.shape
        h = self.heads
        return x.reshape(b, n, h, c // h).permute(0, 2, 1, 3).reshape(b * h, n, c // h)

    def forward(self, x, context=None):
        ctx = x if context is None else context
        if self.use_sdpa:
            # AttnProcessor2_0: [B, N, h*dh] -> [B, h, N, dh], fused attention, back to [B, N, h*dh].
            b = x.shape[0]
            q, k, v = self.to_q(x), self.to_k(ctx), self.to_v(ctx)
            dh = q.shape[-1] // self.heads
            q, k, v = (y.view(b, -1, self.heads, dh).transpose(1, 2) for y in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
            out = out.transpose(1, 2).reshape(b, -1, self.heads * dh).to(q.dtype)
            return self.to_out[1](self.to_out[0](out))
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(ctx)), self._split(self.to_v(ctx))
        scores = torch.baddbmm(torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype, device=q.device),
                               q, k.transpose(-1, -2), beta=0, alpha=self.scale)
        out = torch.bmm(scores.softmax(dim=-1), v)
        bh, n, dh = out.shape
        b = bh // self.heads
        out = out.reshape(b, self.heads, n, dh).permute(0, 2, 1, 3).reshape(b, n, self.heads * dh)
        return self.to_out[1](self.to_out[0](out))


class GEGLU(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x):
        for m in self.net:
            x = m(x)
        return x


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, heads, dim_head, context_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, dim, heads, dim_head)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.attn2 = Attention(dim, context_dim, heads, dim_head)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5)
        self.ff = FeedForward(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """GroupNorm (eps 1e-6, fixed in diffusers) -> proj_in (1x1 conv, or Linear with
    use_linear_projection) -> transformer blocks on [B, HW, C] -> proj_out -> + residual."""

    def __init__(self, heads, dim_head, channels, layers, context_dim, groups, linear_proj):
        super().__init__()
        inner = heads * dim_head
        self.linear_proj = linear_proj
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        if linear_proj:
            self.proj_in, self.proj_out = nn.Linear(channels, inner), nn.Linear(inner, channels)
        else:
            self.proj_in, self.proj_out = nn.Conv2d(channels, inner, 1), nn.Conv2d(inner, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(layers)])

    def forward(self, x, context):
        b, _, hgt, wid = x.shape
        res = x
        x = self.norm(x)
        if self.linear_proj:
            x = x.permute(0, 2, 3, 1).reshape(b, hgt * wid, -1)
            x = self.proj_in(x)
        else:
            x = self.proj_in(x)
            x = x.permute(0, 2, 3, 1).reshape(b, hgt * wid, -1)
        for blk in self.transformer_blocks:
            x = blk(x, context)
        if self.linear_proj:
            x = self.proj_out(x)
            x = x.reshape(b, hgt, wid, -1).permute(0, 3, 1, 2).contiguous()
        else:
            x = x.reshape(b, hgt, wid, -1).permute(0, 3, 1, 2).contiguous()
            x = self.proj_out(x)
        return x + res


# ---------------------------------------------------------------------------------------- conv blocks

class ResnetBlock2D(nn.Module):
    def __init__(self, cin, cout, temb_ch, groups, eps, out_scale=1.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_ch, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps, affine=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.out_scale = out_scale

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.out_scale


class Downsample2D(nn.Module):
    def __init__(self, ch, padding):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=padding)

    def forward(self, x):
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, size):
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class DownBlock(nn.Module):
    """CrossAttnDownBlock2D (with_attn) or DownBlock2D."""

    def __init__(self, cin, cout, temb_ch, layers, with_attn, heads, tlayers, ctx_dim, groups, eps,
                 add_down, pad, linear_proj):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(cin if i == 0 else cout, cout, temb_ch, groups, eps) for i in range(layers)])
        self.attentions = nn.ModuleList(
            [Transformer2DModel(heads, cout // heads, cout, tlayers, ctx_dim, groups, linear_proj)
             for _ in range(layers)]) if with_attn else None
        self.downsamplers = nn.ModuleList([Downsample2D(cout, pad)]) if add_down else None

    def forward(self, x, temb, context):
        states = []
        for i, res in enumerate(self.resnets):
            x = res(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            states.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            states.append(x)
        return x, states


class UpBlock(nn.Module):
    """CrossAttnUpBlock2D (with_attn) or UpBlock2D."""

    def __init__(self, cin, cprev, cout, temb_ch, layers, with_attn, heads, tlayers, ctx_dim, groups, eps,
                 add_up, linear_proj):
        super().__init__()
        res = []
        for i in range(layers):
            skip = cin if i == layers - 1 else cout
            rin = cprev if i == 0 else cout
            res.append(ResnetBlock2D(rin + skip, cout, temb_ch, groups, eps))
        self.resnets = nn.ModuleList(res)
        self.attentions = nn.ModuleList(
            [Transformer2DModel(heads, cout // heads, cout, tlayers, ctx_dim, groups, linear_proj)
             for _ in range(layers)]) if with_attn else None
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if add_up else None

    def forward(self, x, skips, temb, context, up_size):
        for i, res in enumerate(self.resnets):
            x = res(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, up_size)
        return x


class MidBlock(nn.Module):
    """UNetMidBlock2DCrossAttn: resnet, then (attention, resnet) per transformer layer group."""

    def __init__(self, ch, temb_ch, heads, tlayers, ctx_dim, groups, eps, out_scale, linear_proj, layers=1):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(ch, ch, temb_ch, groups, eps, out_scale) for _ in range(layers + 1)])
        self.attentions = nn.ModuleList(
            [Transformer2DModel(heads, ch // heads, ch, tlayers, ctx_dim, groups, linear_proj)
             for _ in range(layers)])

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        for attn, res in zip(self.attentions, self.resnets[1:]):
            x = res(attn(x, context), temb)
        return x


# ------------------------------------------------------------------------------------------ the U-Net

class TimestepEmbedding(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.linear_1 = nn.Linear(cin, cout)
        self.linear_2 = nn.Linear(cout, cout)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


def timestep_features(t, dim, flip_sin_to_cos, freq_shift, max_period=10000):
    """diffusers' get_timestep_embedding."""
    half = dim // 2
    expo = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    emb = t[:, None].float() * torch.exp(expo)[None, :]
    emb = torch.cat([emb.sin(), emb.cos()], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def _per_block(value, n, name):
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"unet config: {name} has {len(value)} entries, expected {n}")
        return list(value)
    return [value] * n


def _check_config(cfg):
    unsupported = {
        "class_embed_type": None, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
        "time_cond_proj_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None,
        "resnet_time_scale_shift": "default", "only_cross_attention": False, "dual_cross_attention": False,
        "center_input_sample": False, "num_class_embeds": None, "time_embedding_type": "positional",
        "act_fn": "silu", "conv_in_kernel": 3, "conv_out_kernel": 3, "reverse_transformer_layers_per_block": None,
        "attention_type": "default", "resnet_out_scale_factor": 1.0, "time_embedding_dim": None,
        "class_embeddings_concat": False, "resnet_skip_time_act": False, "mid_block_only_cross_attention": None,
        "cross_attention_norm": None, "dropout": 0.0,
    }
    for key, ok in unsupported.items():
        if key in cfg and cfg[key] != ok:
            raise ValueError(f"unet config: {key}={cfg[key]!r} is not supported by this re-implementation")
    if cfg.get("upcast_attention") not in (None, False):
        raise ValueError("unet config: upcast_attention=true is not supported by this re-implementation")
    if cfg.get("addition_embed_type") not in (None, "text_time"):
        raise ValueError(f"unet config: addition_embed_type={cfg['addition_embed_type']!r} is not supported "
                         "(only null and 'text_time')")
    if cfg.get("addition_embed_type") == "text_time":
        for key in ("addition_time_embed_dim", "projection_class_embeddings_input_dim"):
            if not cfg.get(key):
                raise ValueError(f"unet config: addition_embed_type 'text_time' needs {key}")
    for bt in cfg["down_block_types"]:
        if bt not in ("CrossAttnDownBlock2D", "DownBlock2D"):
            raise ValueError(f"unet config: down block type {bt} not supported")
    for bt in cfg["up_block_types"]:
        if bt not in ("CrossAttnUpBlock2D", "UpBlock2D"):
            raise ValueError(f"unet config: up block type {bt} not supported")
    if cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise ValueError(f"unet config: mid block type {cfg['mid_block_type']} not supported")


class UNet2DConditionModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        _check_config(cfg)
        self.cfg = cfg
        boc = list(cfg["block_out_channels"])
        nb = len(boc)
        groups, eps = cfg.get("norm_num_groups", 32), cfg.get("norm_eps", 1e-5)
        ctx = cfg["cross_attention_dim"]
        layers = cfg.get("layers_per_block", 2)
        linear_proj = cfg.get("use_linear_projection", False)
        # SD1.x quirk kept by diffusers: attention_head_dim is really the head count when
        # num_attention_heads is absent.
        heads = _per_block(cfg.get("num_attention_heads") or cfg["attention_head_dim"], nb, "num_attention_heads")
        tlayers = _per_block(cfg.get("transformer_layers_per_block", 1), nb, "transformer_layers_per_block")
        self.flip, self.shift = cfg.get("flip_sin_to_cos", True), cfg.get("freq_shift", 0)
        temb_ch = boc[0] * 4

        self.conv_in = nn.Conv2d(cfg["in_channels"], boc[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(boc[0], temb_ch)
        # SDXL: add_time_proj (sinusoids of each of the 6 time ids, no parameters) after the pooled text
        # embeds -> add_embedding, added to the time embedding (diffusers' "text_time").
        self.text_time = cfg.get("addition_embed_type") == "text_time"
        if self.text_time:
            self.addition_time_embed_dim = cfg["addition_time_embed_dim"]
            self.add_embedding = TimestepEmbedding(cfg["projection_class_embeddings_input_dim"], temb_ch)

        self.down_blocks = nn.ModuleList()
        cout = boc[0]
        for i, bt in enumerate(cfg["down_block_types"]):
            cin, cout = cout, boc[i]
            self.down_blocks.append(DownBlock(
                cin, cout, temb_ch, layers, bt == "CrossAttnDownBlock2D", heads[i], tlayers[i], ctx, groups, eps,
                add_down=i != nb - 1, pad=cfg.get("downsample_padding", 1), linear_proj=linear_proj))

        self.mid_block = MidBlock(boc[-1], temb_ch, heads[-1], tlayers[-1], ctx, groups, eps,
                                  cfg.get("mid_block_scale_factor", 1), linear_proj)

        rboc, rheads, rtl = boc[::-1], heads[::-1], tlayers[::-1]
        self.up_blocks = nn.ModuleList()
        cout = rboc[0]
        for i, bt in enumerate(cfg["up_block_types"]):
            cprev, cout = cout, rboc[i]
            cin = rboc[min(i + 1, nb - 1)]
            self.up_blocks.append(UpBlock(
                cin, cprev, cout, temb_ch, layers + 1, bt == "CrossAttnUpBlock2D", rheads[i], rtl[i], ctx,
                groups, eps, add_up=i != nb - 1, linear_proj=linear_proj))

        self.conv_norm_out = nn.GroupNorm(groups, boc[0], eps=eps)
        self.conv_out = nn.Conv2d(boc[0], cfg["out_channels"], 3, padding=1)
        self.lora_layers = [m for m in self.modules() if isinstance(m, LoRALinear)]

    # ------------------------------------------------------------------ pieces shared by forward/encode
    def _temb(self, timestep, batch, dtype, added_cond_kwargs=None, trace=None):
        t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep])
        t = t.to(self.conv_in.weight.device)
        t = t.reshape(-1).expand(batch) if t.numel() == 1 else t.reshape(-1)
        temb = self.time_embedding(timestep_features(t, self.conv_in.out_channels, self.flip, self.shift).to(dtype))
        if trace is not None:
            trace["time_embedding"] = temb
        if self.text_time:
            if not added_cond_kwargs or "text_embeds" not in added_cond_kwargs or "time_ids" not in added_cond_kwargs:
                raise ValueError("this U-Net has addition_embed_type 'text_time': pass added_cond_kwargs "
                                 "{'text_embeds': [B, pooled], 'time_ids': [B, 6]}")
            text_embeds, time_ids = added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"]
            time_embeds = timestep_features(time_ids.flatten(), self.addition_time_embed_dim, self.flip, self.shift)
            time_embeds = time_embeds.reshape(text_embeds.shape[0], -1)
            add_embeds = torch.cat([text_embeds, time_embeds], dim=-1).to(temb.dtype)
            aug = self.add_embedding(add_embeds)
            if trace is not None:
                trace["add_embedding"] = aug
            temb = temb + aug
        return temb

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, trace=None):
        temb = self._temb(timestep, sample.shape[0], sample.dtype, added_cond_kwargs, trace)
        x = self.conv_in(sample)
        if trace is not None:
            trace["conv_in"] = x
        skips = [x]
        for i, blk in enumerate(self.down_blocks):
            x, states = blk(x, temb, encoder_hidden_states)
            skips.extend(states)
            if trace is not None:
                trace[f"down_blocks.{i}"] = x
        x = self.mid_block(x, temb, encoder_hidden_states)
        if trace is not None:
            trace["mid_block"] = x
        for i, blk in enumerate(self.up_blocks):
            n = len(blk.resnets)
            mine, skips = skips[-n:], skips[:-n]
            up_size = skips[-1].shape[2:] if skips else None
            x = blk(x, mine, temb, encoder_hidden_states, up_size)
            if trace is not None:
                trace[f"up_blocks.{i}"] = x
        return self.conv_out(F.silu(self.conv_norm_out(x)))

    def encode(self, sample, timestep, encoder_hidden_states, layer="mid", added_cond_kwargs=None):
        """NCP encoder E (METHOD.md section 3): time embedding (+ SDXL's add_embedding), conv_in, all down
        blocks and, for layer "mid", the mid block. Runs with whatever LoRA state the caller set (E is the
        base model: call it inside `lora_disabled`)."""
        temb = self._temb(timestep, sample.shape[0], sample.dtype, added_cond_kwargs)
        x = self.conv_in(sample)
        for blk in self.down_blocks:
            x, _ = blk(x, temb, encoder_hidden_states)
        if layer == "mid":
            x = self.mid_block(x, temb, encoder_hidden_states)
        elif layer != "down":
            raise ValueError(f"encode: layer must be 'mid' or 'down', got {layer!r}")
        return x

    # ------------------------------------------------------------------------------------ LoRA helpers
    def add_lora(self, rank=4, alpha=4.0, b_std=1e-3, seed=0):
        """LoRA on every attention's to_q/to_k/to_v/to_out.0; freezes all base weights. Returns the
        LoRA parameters in module order."""
        for p in self.parameters():
            p.requires_grad_(False)
        gen = torch.Generator().manual_seed(seed)
        params = []
        for m in self.lora_layers:
            m.add_lora(rank, alpha, b_std, gen)
            params += [m.lora_A, m.lora_B]
        return params

    def set_lora_enabled(self, on):
        for m in self.lora_layers:
            m.lora_enabled = on

    def lora_modules(self):
        """{diffusers module name: LoRALinear} for the layers that carry a LoRA."""
        return {n: m for n, m in self.named_modules() if isinstance(m, LoRALinear) and m.lora_A is not None}

    def load_base_state_dict(self, sd):
        """Loads diffusers weights; the only keys allowed to be missing are the LoRA tensors."""
        missing, unexpected = self.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not (k.endswith(".lora_A") or k.endswith(".lora_B"))]
        if missing or unexpected:
            raise ValueError(f"unet weights: missing {missing[:5]} ({len(missing)}), "
                             f"unexpected {unexpected[:5]} ({len(unexpected)})")


class lora_disabled:
    """Context manager: the base U-Net (reference model / NCP encoder) without touching weights."""

    def __init__(self, unet):
        self.unet = unet

    def __enter__(self):
        self.unet.set_lora_enabled(False)

    def __exit__(self, *exc):
        self.unet.set_lora_enabled(True)
