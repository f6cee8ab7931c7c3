"""Promptable counterfactual diffusion, latent DiT-B/2 (Shen et al. 2024): 128x128 BraTS
slices through the Stable Diffusion VAE, each modality replicated to three channels and
encoded separately (4 x 4 = 16 latent channels at 16x16), DiT-B/2 with learned sigma and
class dropout 0.1, AdamW 1e-4, batch 128, 15k steps.

Set vae.checkpoint to the SD VAE (a diffusers AutoencoderKL folder or .safetensors, e.g.
stabilityai/sd-vae-ft-mse) or to a workdir trained with configs/vae_brats.py (then also
--config.vae.preset=mri4: the DiT's input_size and in_channels follow data.image_size and the
VAE's preset and mode). Without it the run is refused; --config.vae.allow_untrained=True runs
it on an untrained VAE, whose latents mean nothing (smoke tests only, and the toy variant)."""

import ml_collections

from jaxcf.training.config import apply_toy, base_config, is_toy, latent_shape


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: None (the paper's recipe) | "toy" (its CPU-test size: a 2-block DiT on the 4x4
    latents of 32 px slices through an untrained 4-channel MRI VAE)."""
    toy = is_toy(arg)
    c = base_config()
    c.data.update(dataset="brats2021", task="slices2d", image_size=128, batch_size=128)
    c.vae.update(preset="sd", checkpoint="", mode="auto")
    # SD VAE, per modality: 128 px / 8 = 16x16 latents, 4 modalities x 4 = 16 channels.
    c.model.update(family="dit", preset="pcf_dit_brats128", num_classes=2, **latent_shape(c))
    c.diffusion.update(
        schedule="linear",
        prediction="eps",
        variance="learned_range",
        space="latent",
        condition="label",
        cond_drop_prob=0.1,
    )
    c.optim.update(lr=1e-4, weight_decay=0.0, grad_clip=0.0)
    c.train.update(num_steps=15_000, checkpoint_every=2_500, sample_every=2_500)
    c.sampler.update(num_steps=100, guidance_scale=3.0)
    if toy:
        apply_toy(c, preset="DiT-S/2", hidden_size=64, depth=2, num_heads=2)
        c.data.image_size = 32  # 4x4 latents: 2x2 patches of 2
        c.vae.update(preset="mri4", allow_untrained=True)  # joint: 4 latent channels
    return c
