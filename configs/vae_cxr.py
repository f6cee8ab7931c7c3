"""A one-channel chest X-ray autoencoder for the CPU phantom proof of paper 003 (attention
regulation, configs/sd_cxr.py:phantom64). Paper 003 itself keeps Stable Diffusion's VAE
frozen (configs/sd_cxr.py, vae.checkpoint = the pipeline's vae/ folder): nothing to train.
This one exists because SD's 83.7M-parameter VAE at 512 px does not fit a 2-core budget.

    python -m jaxcf.train --config=configs/vae_cxr.py --workdir=runs/vae_cxr64
    python -m jaxcf.train --config=configs/sd_cxr.py:phantom64 --workdir=runs/sd_cxr64 \\
        --config.vae.checkpoint=runs/vae_cxr64 --config.vae.scaling_factor=<1 / latent_std>

The default: CXR phantoms rendered at 64 px (480 cases, 40% normal, jaxcf's MIMIC-CXR-like
layout) -> 16 x 16 x 4 latents of the VAE preset cxr_small (16, 32, 64 channels, one ResNet
per level), L1 + 1e-6 KL, AdamW 1e-3, EMA 0.995, batch 16, 1000 steps. The training log's
latent_std (the std of a batch's latent means) gives the latent model's vae.scaling_factor.

Variants:
  toy   its CPU-test size: 16 px radiographs of 4 phantoms, batch 2, 10 steps.
"""

import ml_collections

from jaxcf.data.config import follow
from jaxcf.training.config import apply_toy, base_config, cxr_phantom64_data, is_toy


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: None (the phantom-proof autoencoder) | "toy" (its CPU-test size)."""
    c = base_config()
    c.train.task = "vae"
    cxr_phantom64_data(c)
    c.model.update(
        family="vae",
        preset="cxr_small",
        in_channels=follow(c.data, "channels"),
        out_channels=follow(c.data, "channels"),
    )
    c.vae_loss.kl_weight = 1e-6
    c.optim.update(lr=1e-3, weight_decay=0.0, ema_decay=0.995)
    c.train.update(num_steps=1000, log_every=100, checkpoint_every=250, sample_every=0)
    c.mesh.update(data=1, fsdp=1)
    if is_toy(arg):
        apply_toy(c)
        c.data.phantom.size = 16
    return c
