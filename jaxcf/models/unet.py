"""ADM / guided-diffusion-style UNet (Dhariwal & Nichol 2021), 2-D or 3-D.

One class covers the papers' UNets:
  - Diff-SCM (Sanchez et al. 2022): class labels added to the time embedding AND, as GLIDE
    attention conditioning, the label embedding's outer product e x e used as extra key /
    value tokens in every attention block (`class_attention=True`);
  - the promptable counterfactual UNet (Shen et al. 2024) at 128 px;
  - WDM (Friedrich et al. 2024): no attention, additive skips (h + skip) / 2, x0-prediction
    on 8C wavelet sub-bands (presets in jaxcf.models.wdm);
  - Simple Diffusion options (Hoogeboom et al. 2023) used by the language-guided 3-D model:
    extra bottleneck blocks, dropout only at low resolutions, cross-attention to text
    tokens at several resolutions.

    model(x, t, cond=None, *, rngs=None, control=None) -> prediction (float32)
x (B, *spatial, C) channels-last; t (B,) timesteps; cond {"label": (B,) int32,
"context": (B, L, D), "context_mask": (B, L)}; rngs (nnx.Rngs with "dropout") enables
dropout; control is an attention-control function (see jaxcf.models.layers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcf.errors import InputError
from jaxcf.models import layers as L


class _Stage(nnx.Module):
    """One UNet stage: a ResBlock (or plain resampler), then optional attention, then an
    optional resampling block (decoder)."""

    def __init__(self, block, attn=None, resample=None):
        self.block, self.attn, self.resample = block, attn, resample

    def __call__(self, h, emb, ctx: dict, rngs, control):
        h = self.block(h, emb, rngs) if isinstance(self.block, L.ResBlock) else self.block(h)
        if self.attn is not None:
            h = self.attn(h, ctx["context"], ctx["context_mask"], control, ctx["kv_context"])
        if self.resample is not None:
            r = self.resample
            h = r(h, emb, rngs) if isinstance(r, L.ResBlock) else r(h)
        return h


class UNet(nnx.Module):
    """ADM UNet; see the module docstring.

    Resolutions (`attention_resolutions`, `cross_attention_resolutions`) are feature-map
    sizes in pixels along the first spatial axis, as guided-diffusion's flags: with
    image_size 64, "32,16,8" means after 1, 2 and 3 downsamplings.
    """

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
        dropout_min_level: int = 0,
        learn_sigma: bool = False,
        num_classes: int = 0,
        label_mlp: bool = False,
        class_attention: bool = False,
        context_dim: int | None = None,
        cross_attention_resolutions: Sequence[int] = (),
        mid_attention: bool = True,
        num_mid_blocks: int = 2,
        scale_shift_norm: bool = True,
        resblock_updown: bool = True,
        conv_resample: bool = True,
        additive_skips: bool = False,
        groups: int = 32,
        dtype: Any = None,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        if spatial_dims not in (2, 3):
            raise InputError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if class_attention and not num_classes:
            raise InputError("class_attention needs num_classes > 0")
        if cross_attention_resolutions and not context_dim:
            raise InputError("cross_attention_resolutions need context_dim (the text token width)")
        out_channels = out_channels or in_channels * (2 if learn_sigma else 1)
        self.dtype, self.remat, self.additive_skips = dtype, remat, additive_skips
        self.class_attention = class_attention
        self.spatial_dims, self.in_channels = spatial_dims, in_channels
        self.size_multiple = 2 ** (len(channel_mult) - 1)
        self.has_cross = bool(cross_attention_resolutions)
        mc, emb_dim = model_channels, 4 * model_channels
        self.time_embed = L.TimestepEmbedder(emb_dim, freq_dim=mc, dtype=dtype, rngs=rngs)
        # Diff-SCM: a label table of width model_channels with a zero, untrained null row,
        # then a Linear-SiLU-Linear like the time embedding's (its `class_embed`).
        label_dim = mc if label_mlp else emb_dim
        self.label_embed = (
            L.LabelEmbedder(num_classes, label_dim, zero_null=label_mlp, dtype=dtype, rngs=rngs)
            if num_classes
            else None
        )
        self.label_mlp = (
            L.EmbeddingMLP(mc, emb_dim, dtype=dtype, rngs=rngs)
            if num_classes and label_mlp
            else None
        )
        kv_dim = emb_dim if class_attention else None

        def res(cin, cout, level, **kw):
            drop = dropout if level >= dropout_min_level else 0.0
            return L.ResBlock(
                spatial_dims,
                cin,
                cout,
                emb_dim,
                dropout=drop,
                scale_shift=scale_shift_norm,
                groups=groups,
                dtype=dtype,
                rngs=rngs,
                **kw,
            )

        def attn(ch, resolution, name, self_attn=None):
            if self_attn is None:
                self_attn = resolution in attention_resolutions
            cross = context_dim if resolution in cross_attention_resolutions else None
            if not (self_attn or cross):
                return None
            return L.SpatialAttention(
                ch,
                heads=num_heads,
                head_channels=head_channels,
                groups=groups,
                kv_context_dim=kv_dim,
                cross_context_dim=cross,
                self_attention=self_attn,
                name=name,
                dtype=dtype,
                rngs=rngs,
            )

        ch = int(channel_mult[0] * mc)
        self.conv_in = L.conv(spatial_dims, in_channels, ch, dtype=dtype, rngs=rngs)
        sizes = [image_size // 2**level for level in range(len(channel_mult))]
        if cross_attention_resolutions and not set(cross_attention_resolutions) & set(sizes):
            # Otherwise no layer would read the text and the prompt would be silently ignored.
            raise InputError(
                f"cross_attention_resolutions {tuple(cross_attention_resolutions)} match no "
                f"feature map of this UNet (sizes {tuple(sizes)}, image_size {image_size}): "
                "the condition would be ignored"
            )
        skips, down, resolution = [ch], [], image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                name = f"down.{len(down)}.attn"
                down.append(_Stage(res(ch, mult * mc, level), attn(mult * mc, resolution, name)))
                ch = mult * mc
                skips.append(ch)
            if level != len(channel_mult) - 1:
                if resblock_updown:
                    block = res(ch, ch, level, down=True)
                else:
                    block = L.Downsample(
                        spatial_dims, ch, ch, conv_resample, dtype=dtype, rngs=rngs
                    )
                down.append(_Stage(block))
                skips.append(ch)
                resolution //= 2
        self.down = nnx.List(down)

        deepest = len(channel_mult) - 1
        # As in ADM, the bottleneck has self-attention whenever mid_attention is set, whatever
        # attention_resolutions says; text cross-attention follows the resolution list.
        mid = [_Stage(res(ch, ch, deepest), attn(ch, resolution, "mid.attn", mid_attention))]
        mid += [_Stage(res(ch, ch, deepest)) for _ in range(num_mid_blocks - 1)]
        self.mid = nnx.List(mid)

        up = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                skip_ch = skips.pop()
                if additive_skips:  # WDM: decoder widths follow the encoder's skips
                    cin, cout = ch, skips[-1] if skips else mc
                else:
                    cin, cout = ch + skip_ch, mult * mc
                name = f"up.{len(up)}.attn"
                resample = None
                if level and i == num_res_blocks:
                    if resblock_updown:
                        resample = res(cout, cout, level, up=True)
                    else:
                        resample = L.Upsample(
                            spatial_dims, cout, cout, conv_resample, dtype=dtype, rngs=rngs
                        )
                up.append(_Stage(res(cin, cout, level), attn(cout, resolution, name), resample))
                ch = cout
                if resample is not None:
                    resolution *= 2
        self.up = nnx.List(up)
        self.norm_out = L.GroupNorm(ch, groups, rngs=rngs)
        self.conv_out = L.conv(
            spatial_dims, ch, out_channels, zero_init=True, dtype=dtype, rngs=rngs
        )

    def _run(self, stage: _Stage, h, emb, ctx, rngs, control):
        # graph_updates=False keeps gradients with respect to the input alone working (the
        # parameters then come from an outer trace: guidance, latent correction). Inside such
        # a remat the Rngs counter does not advance, so each stage gets its own dropout key
        # drawn outside; a control may record maps (sow), so it runs without remat.
        if not self.remat or control is not None:
            return stage(h, emb, ctx, rngs, control)
        key = None if rngs is None else rngs.dropout()

        def run(stage, h, emb, ctx, key):
            inner = None if key is None else nnx.Rngs(dropout=key)
            return stage(h, emb, ctx, inner, None)

        return nnx.remat(run, graph_updates=False)(stage, h, emb, ctx, key)

    def _check_inputs(self, x: jax.Array, t: jax.Array, cond: dict) -> jax.Array:
        """Validate shapes and conditions (one clear error each); returns t as (B,)."""
        spatial = "D, H, W" if self.spatial_dims == 3 else "H, W"
        if x.ndim != self.spatial_dims + 2 or x.shape[-1] != self.in_channels:
            raise InputError(
                f"this {self.spatial_dims}-D UNet expects x of shape (B, {spatial}, "
                f"{self.in_channels}), got {x.shape}"
            )
        if any(n % self.size_multiple for n in x.shape[1:-1]):
            raise InputError(
                f"spatial sizes {x.shape[1:-1]} must be multiples of {self.size_multiple} "
                "(2 ** (levels - 1) for the downsamplings)"
            )
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.full((x.shape[0],), t)
        if t.shape != (x.shape[0],):
            raise InputError(f"t must be a scalar or ({x.shape[0]},), got shape {t.shape}")
        if "label" in cond and self.label_embed is None:
            raise InputError(
                "cond['label'] given to an unconditional UNet (num_classes=0): the label would "
                "be ignored and guidance would do nothing"
            )
        if self.label_embed is not None and "label" not in cond:
            raise InputError("this UNet is class-conditional: pass cond={'label': (B,) int32}")
        if cond.get("context") is not None and not self.has_cross:
            raise InputError(
                "cond['context'] given to a UNet without cross-attention "
                "(set context_dim and cross_attention_resolutions)"
            )
        return t

    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        cond: dict | None = None,
        *,
        rngs: nnx.Rngs | None = None,
        control: L.AttentionControl | None = None,
    ) -> jax.Array:
        """x (B, *spatial, C_in), t (B,) -> (B, *spatial, C_out) float32."""
        cond = cond or {}
        t = self._check_inputs(x, t, cond)
        dtype = self.dtype or x.dtype
        emb = self.time_embed(t)
        ctx = {
            "context": cond.get("context"),
            "context_mask": cond.get("context_mask"),
            "kv_context": None,
        }
        if self.label_embed is not None:
            e = self.label_embed(cond["label"])
            if self.label_mlp is not None:
                e = self.label_mlp(e)
            emb = emb + e
            if self.class_attention:
                # Diff-SCM / GLIDE: the label embedding's outer product, D tokens of width D.
                ctx["kv_context"] = e[:, :, None] * e[:, None, :]
        h = self.conv_in(x.astype(dtype))
        skips = [h]
        for stage in self.down:
            h = self._run(stage, h, emb, ctx, rngs, control)
            skips.append(h)
        for stage in self.mid:
            h = self._run(stage, h, emb, ctx, rngs, control)
        for stage in self.up:
            skip = skips.pop()
            h = (h + skip) / 2 if self.additive_skips else jnp.concatenate([h, skip], axis=-1)
            h = self._run(stage, h, emb, ctx, rngs, control)
        return self.conv_out(jax.nn.silu(self.norm_out(h))).astype(jnp.float32)


# Diff-SCM on BraTS 2021 at 64 px (paper 001, Sec. 4, and its reference code): 64 ch,
# mult 1,2,3,4, 2 res blocks, 1 head, attention at 32/16/8, dropout 0.1, AdaGN, resblock
# up/down, labels healthy (0) / tumour (1) with null row 2, attention conditioning, fixed
# variance.
_DIFFSCM = dict(
    spatial_dims=2,
    image_size=64,
    in_channels=4,
    model_channels=64,
    channel_mult=(1, 2, 3, 4),
    num_res_blocks=2,
    attention_resolutions=(32, 16, 8),
    num_heads=1,
    dropout=0.1,
    num_classes=2,
    label_mlp=True,
    class_attention=True,
)
# The same network at 128 px (Diff-SCM evaluates at 128: mult 1,1,2,3,4).
_DIFFSCM_128 = dict(_DIFFSCM, image_size=128, channel_mult=(1, 1, 2, 3, 4))

PRESETS: dict[str, dict] = {
    "diffscm_brats64": _DIFFSCM,
    "diffscm_brats128": _DIFFSCM_128,
    # Promptable counterfactual diffusion's pixel-space UNet (Shen et al. 2024, 128 px, four
    # modalities, healthy / tumour). The paper gives no hyper-parameters and builds on
    # Diff-SCM, so jaxcf uses Diff-SCM's 128 px network.
    "pcf_unet_brats128": _DIFFSCM_128,
    # Paper 002's 3-D diffusion refiner (Sec. 3.3): the paper names "a 3D U-Net" on 96^3
    # crops without its sizes; jaxcf's: 32 channels, mult 1,2,2,4 (96 -> 12), two res blocks,
    # attention at 12^3 only; 4 sequences + 4 noisy classes + 4 prior classes in, 4 out.
    "refiner_peds": dict(
        spatial_dims=3,
        image_size=96,
        in_channels=12,
        out_channels=4,
        model_channels=32,
        channel_mult=(1, 2, 2, 4),
        num_res_blocks=2,
        attention_resolutions=(12,),
        num_heads=4,
    ),
    # The phantom proof's refiner (configs/refiner_peds.py:phantom48): 32^3 crops, 8 channels,
    # no attention (a CPU budget: 16 channels cost 3.1 s per step of 4 crops, 8 cost 1.3 s).
    "refiner_small": dict(
        spatial_dims=3,
        image_size=32,
        in_channels=12,
        out_channels=4,
        model_channels=8,
        channel_mult=(1, 2, 4),
        num_res_blocks=1,
        attention_resolutions=(),
        mid_attention=False,
        groups=8,
    ),
    # Tiny networks for tests and CPU quickstarts.
    "tiny2d": dict(
        spatial_dims=2,
        image_size=32,
        in_channels=4,
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(16,),
        num_heads=2,
        num_classes=2,
        class_attention=True,
        groups=8,
    ),
    "tiny3d": dict(
        spatial_dims=3,
        image_size=16,
        in_channels=1,
        model_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        num_heads=2,
        groups=8,
    ),
}
