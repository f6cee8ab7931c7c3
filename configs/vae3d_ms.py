"""The frozen 3-D autoencoder of paper 004's MAISI baselines (configs/rflow_ms.py,
configs/linear_ms.py) on MS FLAIR; the recipe is documented in
jaxcf.training.config.maisi_vae_config: AutoencoderKL preset mri3d on 128^3 volumes, 4 latent
channels at 1/4 resolution per axis (MAISI's VAE: 4 latent channels, 4x downsampling),
L1 + 1e-7 KL, AdamW 1e-4, batch 1. For ADNI: --config.data.dataset=adni.

    python -m jaxcf.train --config=configs/vae3d_ms.py --workdir=runs/vae3d_ms
    python -m jaxcf.train --config=configs/rflow_ms.py --workdir=runs/rflow_ms \\
        --config.vae.checkpoint=runs/vae3d_ms

Variants:
  toy        16^3 volumes of 4 procedural MS phantoms, batch 2, 10 steps (seconds on a CPU);
             its workdir is the vae.checkpoint of configs/rflow_ms.py:toy.
  phantom32  the README's phantom proof on 2 CPU cores: the 48 32^3 MS phantoms of
             configs/wdm_ms.py:phantom32 -> 8^3 x 4 latents of the mri3d_small VAE,
             batch 4, AdamW 1e-3, EMA 0.995, 1000 steps, lesion voxels weighted 50x
             in the L1 (vae_loss.mask_weight: without it this VAE erases the 1-3 voxel
             lesions); the vae.checkpoint of configs/rflow_ms.py:phantom32.
"""

import ml_collections

from jaxcf.training.config import apply_toy, is_toy, maisi_vae_config, phantom32_data

PHANTOM32 = "phantom32"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: None (the recipe) | "toy" (its CPU-test size: 16^3 volumes) | "phantom32"."""
    proof = arg == PHANTOM32
    toy = proof or is_toy(arg)
    c = maisi_vae_config("ms")
    if not toy:
        return c
    apply_toy(c)
    if proof:
        phantom32_data(c)
        c.model.preset = "mri3d_small"
        c.optim.update(lr=1e-3, ema_decay=0.995)
        c.vae_loss.mask_weight = 50.0
        c.train.update(num_steps=1000, log_every=100, checkpoint_every=250)
    return c
