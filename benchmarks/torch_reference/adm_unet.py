"""A compact PyTorch ADM UNet (Dhariwal & Nichol 2021), 2-D or 3-D, written for the
jaxcf-vs-PyTorch benchmark (benchmarks/vs_torch.py).

It is the same network as `jaxcf.models.unet.UNet` for the options the benchmark uses
(Diff-SCM: AdaGN scale-shift, resblock up/down, self-attention with GLIDE-style label
tokens appended to the keys and values; WDM: 3-D, no attention, additive skips), in
PyTorch's usual channels-first layout. Modules carry the same names as jaxcf's, so a
jaxcf parameter tree maps onto this state dict by renaming leaves and transposing kernels
(`state_dict_from_jaxcf`): the benchmark copies the weights across and checks that both
networks give the same outputs before it times them.

Not covered (the benchmark does not need them): text cross-attention and the strided-conv
/ pooling resamplers of resblock_updown=False. Parameters are initialised by PyTorch's
defaults; the benchmark overwrites them with jaxcf's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) times -> (B, dim) features [cos(t f), sin(t f)], f_i = max_period^(-i/half)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class MLP(nn.Module):
    """Linear -> SiLU -> Linear (time and label embeddings)."""

    def __init__(self, din: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(din, hidden), nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)))


class LabelEmbed(nn.Module):
    """Label table with a null row at index num_classes; zero_null: that row embeds to 0."""

    def __init__(self, num_classes: int, dim: int, zero_null: bool):
        super().__init__()
        self.num_classes, self.zero_null = num_classes, zero_null
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        e = self.table(labels)
        if self.zero_null:
            e = e.masked_fill((labels == self.num_classes)[:, None], 0.0)
        return e


class GroupNorm(nn.Module):
    """GroupNorm with as many groups as divide the channels (up to `groups`)."""

    def __init__(self, channels: int, groups: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.GroupNorm(math.gcd(groups, channels), channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def _conv(dims: int, cin: int, cout: int, kernel: int = 3) -> nn.Module:
    cls = nn.Conv2d if dims == 2 else nn.Conv3d
    return cls(cin, cout, kernel, padding=kernel // 2)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> [resample] -> conv; embedding as AdaGN scale-shift (or added);
    GroupNorm -> SiLU -> dropout -> conv; identity or 1x1-conv skip (resampled alike)."""

    def __init__(self, dims, cin, cout, emb_dim, *, dropout, scale_shift, groups, up, down):
        super().__init__()
        self.dims, self.up, self.down, self.scale_shift = dims, up, down, scale_shift
        self.norm1 = GroupNorm(cin, groups)
        self.conv1 = _conv(dims, cin, cout)
        self.emb_proj = nn.Linear(emb_dim, 2 * cout if scale_shift else cout)
        self.norm2 = GroupNorm(cout, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(dims, cout, cout)
        self.skip = None if cin == cout else _conv(dims, cin, cout, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return (F.avg_pool2d if self.dims == 2 else F.avg_pool3d)(x, 2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self._resample(F.silu(self.norm1(x))))
        x = self._resample(x)
        e = self.emb_proj(F.silu(emb)).reshape(*emb.shape[:1], -1, *(1,) * self.dims)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return (x if self.skip is None else self.skip(x)) + h


class Attention(nn.Module):
    """Self-attention over all positions; optional extra key / value tokens projected from
    a context (GLIDE / Diff-SCM attention conditioning)."""

    def __init__(self, channels: int, heads: int, groups: int, kv_context_dim: int | None):
        super().__init__()
        self.heads = heads
        self.norm = GroupNorm(channels, groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.context_kv = nn.Linear(kv_context_dim, 2 * channels) if kv_context_dim else None
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, kv_context: torch.Tensor | None) -> torch.Tensor:
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, N, C), positions row-major
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        if self.context_kv is not None:
            ck, cv = self.context_kv(kv_context).chunk(2, dim=-1)
            k, v = torch.cat([k, ck], 1), torch.cat([v, cv], 1)
        heads = lambda a: a.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, H, N, D)
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        out = self.proj(out.transpose(1, 2).flatten(2))
        return x + out.transpose(1, 2).reshape(x.shape)


class Stage(nn.Module):
    """A ResBlock, optional attention, optional resampling ResBlock (as jaxcf's _Stage)."""

    def __init__(self, block, attn=None, resample=None):
        super().__init__()
        self.block, self.attn, self.resample = block, attn, resample

    def forward(self, h, emb, kv_context):
        h = self.block(h, emb)
        if self.attn is not None:
            h = self.attn(h, kv_context)
        if self.resample is not None:
            h = self.resample(h, emb)
        return h


class UNet(nn.Module):
    """ADM UNet; arguments as jaxcf.models.unet.UNet (the subset listed in the module
    docstring). forward(x (B, C, *spatial), t (B,), label (B,) or None) -> (B, C_out, ...)."""

    def __init__(
        self,
        *,
        spatial_dims: int = 2,
        image_size: int = 64,
        in_channels: int = 4,
        model_channels: int = 64,
        out_channels: int | None = None,
        num_res_blocks: int = 2,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        attention_resolutions: Sequence[int] = (32, 16, 8),
        num_heads: int = 1,
        head_channels: int | None = None,
        dropout: float = 0.0,
        learn_sigma: bool = False,
        num_classes: int = 0,
        label_mlp: bool = False,
        class_attention: bool = False,
        mid_attention: bool = True,
        num_mid_blocks: int = 2,
        scale_shift_norm: bool = True,
        resblock_updown: bool = True,
        additive_skips: bool = False,
        groups: int = 32,
    ):
        super().__init__()
        if not resblock_updown:
            raise ValueError("this reference implements resblock_updown=True only")
        dims, mc, emb_dim = spatial_dims, model_channels, 4 * model_channels
        out_channels = out_channels or in_channels * (2 if learn_sigma else 1)
        self.model_channels, self.additive_skips = mc, additive_skips
        self.class_attention = class_attention
        self.time_embed = MLP(mc, emb_dim)
        self.label_embed = (
            LabelEmbed(num_classes, mc if label_mlp else emb_dim, zero_null=label_mlp)
            if num_classes
            else None
        )
        self.label_mlp = MLP(mc, emb_dim) if num_classes and label_mlp else None
        kv_dim = emb_dim if class_attention else None

        def res(cin, cout, up=False, down=False):
            return ResBlock(
                dims,
                cin,
                cout,
                emb_dim,
                dropout=dropout,
                scale_shift=scale_shift_norm,
                groups=groups,
                up=up,
                down=down,
            )

        def attn(ch, resolution, enabled=None):
            enabled = resolution in attention_resolutions if enabled is None else enabled
            if not enabled:
                return None
            heads = ch // head_channels if head_channels else num_heads
            return Attention(ch, heads, groups, kv_dim)

        ch = channel_mult[0] * mc
        self.conv_in = _conv(dims, in_channels, ch)
        skips, down, resolution = [ch], [], image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                down.append(Stage(res(ch, mult * mc), attn(mult * mc, resolution)))
                ch = mult * mc
                skips.append(ch)
            if level != len(channel_mult) - 1:
                down.append(Stage(res(ch, ch, down=True)))
                skips.append(ch)
                resolution //= 2
        self.down = nn.ModuleList(down)
        mid = [Stage(res(ch, ch), attn(ch, resolution, mid_attention))]
        mid += [Stage(res(ch, ch)) for _ in range(num_mid_blocks - 1)]
        self.mid = nn.ModuleList(mid)
        up = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                skip_ch = skips.pop()
                if additive_skips:
                    cin, cout = ch, skips[-1] if skips else mc
                else:
                    cin, cout = ch + skip_ch, mult * mc
                resample = res(cout, cout, up=True) if level and i == num_res_blocks else None
                up.append(Stage(res(cin, cout), attn(cout, resolution), resample))
                ch = cout
                if resample is not None:
                    resolution *= 2
        self.up = nn.ModuleList(up)
        self.norm_out = GroupNorm(ch, groups)
        self.conv_out = _conv(dims, ch, out_channels)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        kv_context = None
        if self.label_embed is not None:
            e = self.label_embed(label)
            if self.label_mlp is not None:
                e = self.label_mlp(e)
            emb = emb + e
            if self.class_attention:
                kv_context = e[:, :, None] * e[:, None, :]  # D tokens of width D
        h = self.conv_in(x)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb, kv_context)
            skips.append(h)
        for stage in self.mid:
            h = stage(h, emb, kv_context)
        for stage in self.up:
            skip = skips.pop()
            h = (h + skip) / 2 if self.additive_skips else torch.cat([h, skip], dim=1)
            h = stage(h, emb, kv_context)
        return self.conv_out(F.silu(self.norm_out(h)))


def state_dict_from_jaxcf(flat: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """{dotted jaxcf parameter path: array} (jaxcf UNet params, flattened) -> a state dict
    for this UNet: kernels become weights (dense (in, out) -> (out, in); conv
    (*k, in, out) -> (out, in, *k)), GroupNorm scales and embedding tables weights."""
    out = {}
    for path, value in flat.items():
        value = np.asarray(value, np.float32)
        stem, leaf = path.rsplit(".", 1)
        if leaf == "kernel":
            if value.ndim == 2:
                value = value.T
            else:
                value = np.moveaxis(value, (-1, -2), (0, 1))
            leaf = "weight"
        elif leaf in ("scale", "embedding"):
            leaf = "weight"
        out[f"{stem}.{leaf}"] = torch.from_numpy(np.array(value, order="C", copy=True))
    return out
