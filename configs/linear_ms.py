"""MAISI Linear (paper 004, Sec. 2.2, Table 1) on MS FLAIR by lesion load: the same latent
3-D text UNet as configs/rflow_ms.py with MAISI's DDPM variant instead of rectified flow
(1000 steps, eps-prediction), sampled with deterministic DDIM over all 1000 steps; the recipe
is documented in jaxcf.training.config.maisi_latent_config, the command chain in
configs/rflow_ms.py (--config=configs/linear_ms.py in its place). The toy variant: 16^3
volumes, a tiny 3-D text UNet, 10 DDIM steps; --config.vae.checkpoint=WORKDIR of
configs/vae3d_ms.py:toy, or an untrained VAE."""

import ml_collections

from jaxcf.training.config import is_toy, maisi_latent_config, maisi_latent_toy


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: None (the paper's recipe) | "toy" (its CPU-test size)."""
    toy = is_toy(arg)
    c = maisi_latent_config("ms", "linear")
    return maisi_latent_toy(c) if toy else c
