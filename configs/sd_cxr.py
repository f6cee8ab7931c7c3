"""Stable Diffusion 1.5 fine-tuned on chest X-rays (paper 003, attention regulation for CXR):
SD 1.5's latent UNet trained further on 512 px radiographs with their report's impression as
the prompt, the SD VAE and the CLIP ViT-L/14 text encoder frozen (REFERENCES.md "Attention
regulation for CXR"). The recipe:

  data       MIMIC-CXR-JPG layout (docs/data.md; data.root) or, with data.root unset, the
             CXR phantoms jaxcf renders; data task "cxr": one-channel radiographs at 512 px
             in [-1, 1], organ masks, prompt = the report's IMPRESSION (else FINDINGS),
             truncated to 77 words (jaxcf.data.sources.impression; paper 003: 77 tokens).
  VAE        the SD VAE (vae.preset "sd"; vae.checkpoint: the pipeline's vae/ folder),
             frozen; the radiograph replicated to RGB (vae.mode auto -> per_modality):
             64x64x4 latents scaled by 0.18215.
  UNet       family sd_unet, preset sd15 (859,520,964 parameters), started from SD 1.5's
             weights: model.checkpoint = the pipeline's unet/ folder (or a single-file SD
             checkpoint), converted by jaxcf.convert.diffusers_unet (jaxcf.models.pretrained);
             empty, it starts from a random init. Its latent channels and size follow the
             data and the VAE; its context width follows text.dim.
  text       the frozen CLIP text tower run on the fly (text.encoder "tower", text.tower
             "clip", text.dim 768; text.checkpoint: the pipeline's text_encoder/ folder;
             77 tokens, CLIP's BPE from the open-clip-torch package).
  diffusion  SD's schedule: scaled_linear betas 0.00085 -> 0.012, 1000 steps, eps
             prediction; the prompt dropped 10% of the time (classifier-free guidance).
  optim      AdamW 1e-4, batch 16 (paper 003); weight decay 1e-2 and gradient clipping at
             1.0 as diffusers' train_text_to_image.py (the paper gives none), EMA 0.9999.
  precision  bf16 compute with --config.model.dtype=bfloat16 (paper 003 trains in bf16;
             parameters, the optimizer and the schedule stay float32).
  sampler    DDIM 50 steps, guidance scale 7.5 (previews; paper 003).

The command, with a local copy of SD 1.5 in diffusers' layout (runwayml/stable-diffusion-v1-5:
unet/, vae/, text_encoder/; no download happens here):

    SD=/models/stable-diffusion-v1-5
    python -m jaxcf.train --config=configs/sd_cxr.py --workdir=runs/sd_cxr \\
        --config.data.root=/data/mimic-cxr-jpg \\
        --config.model.checkpoint=$SD/unet \\
        --config.vae.checkpoint=$SD/vae \\
        --config.text.checkpoint=$SD/text_encoder \\
        --config.model.dtype=bfloat16

Run again with the same workdir to resume (the run's own checkpoint then replaces the
pretrained weights; model.checkpoint is read only when a run starts). Without data.root
the run renders CXR phantoms at 512 px into the workdir first.

Variants:
  toy   the CPU-test size: 32 px CXR phantoms (4 cases, batch 2) through an untrained
        SD-architecture VAE (vae.allow_untrained: 4x4x4 latents that mean nothing), the
        sd_unet preset tiny (widths 32, 64; cross-attention width following text.dim), a
        small trainable prompt encoder (text.encoder trainable, dim 32: no CLIP weights
        offline), 10 steps (tests/test_sd_cxr.py trains 2).
  phantom64  the README's phantom proof of the attention method on 2 CPU cores: the 64 px
        CXR phantoms of configs/vae_cxr.py through that VAE (16 x 16 x 4 latents; give its
        workdir as --config.vae.checkpoint and 1 / its logged latent_std as
        --config.vae.scaling_factor), an SD-layout UNet with cross-attention at both of its
        levels (64, 128 channels; 16 x 16 and 8 x 8, and the mid block at 4 x 4), a
        trainable prompt encoder (dim 64, 2 layers) over the report impressions,
        AdamW 1e-3, EMA 0.995; the method's attention edits at the latent heights 16, 8
        (SD's 64, 32 at 512 px map to the top two levels).
"""

import ml_collections

from jaxcf.data.config import follow
from jaxcf.models.sd_unet import CROSS_DOWN, CROSS_UP
from jaxcf.training.config import (
    apply_toy,
    base_config,
    cxr_phantom64_data,
    is_toy,
    latent_shape,
)

PHANTOM64 = "phantom64"

# Stable Diffusion 1.x: the VAE's latent scale and the training betas (diffusers'
# scheduler config of runwayml/stable-diffusion-v1-5: scaled_linear 0.00085 -> 0.012).
SD_SCALING_FACTOR = 0.18215
SD_BETAS = (0.00085, 0.012)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: None (paper 003's fine-tuning recipe) | "toy" (its CPU-test size) | "phantom64"."""
    proof = arg == PHANTOM64
    toy = proof or is_toy(arg)
    c = base_config()
    c.data.update(dataset="cxr", task="cxr", image_size=512, batch_size=16)
    # Phantoms when data.root is unset: radiographs rendered at the training size (the CXR
    # phantoms have procedural anatomy only).
    c.data.phantom.update(size=512, anatomy="procedural")
    c.vae.update(preset="sd", checkpoint="", mode="auto", scaling_factor=SD_SCALING_FACTOR)
    c.text.update(encoder="tower", tower="clip", dim=768, checkpoint="")
    latent = latent_shape(c)  # 512 px / 8 = 64; 1 channel per_modality -> 4 latent channels
    c.model.update(
        family="sd_unet",
        preset="sd15",
        checkpoint="",  # SD 1.5's unet/ folder: --config.model.checkpoint=PATH
        sample_size=latent["input_size"],
        in_channels=latent["in_channels"],
        out_channels=latent_shape(c)["in_channels"],
        cross_attention_dim=follow(c.text, "dim"),
    )
    beta_start, beta_end = SD_BETAS
    c.diffusion.update(
        schedule="scaled_linear",
        beta_start=beta_start,
        beta_end=beta_end,
        num_timesteps=1000,
        prediction="eps",
        variance="fixed_small",
        space="latent",
        condition="prompt",
        cond_drop_prob=0.1,
    )
    c.optim.update(name="adamw", lr=1e-4, weight_decay=1e-2, grad_clip=1.0, ema_decay=0.9999)
    c.train.update(num_steps=20_000, checkpoint_every=2_000, sample_every=2_000, preview_count=4)
    c.sampler.update(num_steps=50, guidance_scale=7.5)
    if toy:
        apply_toy(c, preset="tiny")
        c.data.image_size = 32  # 4x4 latents: the tiny UNet's two levels
        c.data.phantom.size = 32
        c.vae.allow_untrained = True
        c.text.update(encoder="trainable", dim=32, depth=1, heads=2)
        # the tiny UNet attends at 4 x 4 (its top level) and 2 x 2 (the mid block)
        c.counterfactual.attention.update(
            target_prompt="opacity in the right lower zone", gate_resolutions=(4, 2),
            path_resolutions=(4, 2),
        )  # fmt: skip
    if proof:
        cxr_phantom64_data(c)
        c.vae.update(preset="cxr_small", allow_untrained=False)
        c.text.update(dim=64, depth=2, heads=4)
        c.model.update(
            block_out_channels=(64, 128),
            down_block_types=(CROSS_DOWN, CROSS_DOWN),
            up_block_types=(CROSS_UP, CROSS_UP),
            attention_head_dim=4,
            norm_num_groups=16,
        )
        c.optim.update(lr=1e-3, ema_decay=0.995)
        c.train.update(num_steps=4000, log_every=100, checkpoint_every=500)
        c.sampler.num_steps = 50  # paper 003: DDIM 50 (apply_toy shortens it to 10)
        c.eval.max_items = 0  # every normal radiograph of the split
        attention = c.counterfactual.attention
        attention.update(
            num_steps=50,
            target_prompt="Moderate opacity in the right lower zone, concerning for pneumonia.",
            gate_resolutions=(16, 8),
            path_resolutions=(16, 8),
        )
    return c
