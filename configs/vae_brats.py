"""A 4-channel MRI AutoencoderKL for latent diffusion on BraTS slices (the "mri4" preset:
(64, 128, 256, 256) channels, 4 latent channels at 1/8 resolution), L1 + 1e-6 KL (LDM's
objective without the perceptual / adversarial terms). Use its workdir as vae.checkpoint
of configs/pcf_dit_brats.py with --config.vae.preset=mri4."""

import ml_collections

from jaxcf.data.config import follow
from jaxcf.training.config import apply_toy, base_config, is_toy


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: None (the recipe) | "toy" (its CPU-test size: 16 px slices)."""
    toy = is_toy(arg)
    c = base_config()
    c.train.task = "vae"
    c.data.update(dataset="brats2021", task="slices2d", image_size=128, batch_size=16)
    # Reconstructs every modality of the data: in and out channels = data.channels.
    c.model.update(
        family="vae",
        preset="mri4",
        in_channels=follow(c.data, "channels"),
        out_channels=follow(c.data, "channels"),
    )
    c.vae_loss.kl_weight = 1e-6
    c.optim.update(lr=1e-4, weight_decay=0.0, ema_decay=0.999)
    c.train.update(num_steps=50_000, checkpoint_every=5_000, sample_every=5_000)
    return apply_toy(c) if toy else c
