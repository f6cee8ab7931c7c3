"""MAISI RFlow (paper 004) on ADNI T1 by diagnosis (CN / MCI / AD); the recipe is documented in
jaxcf.training.config.maisi_latent_config, the command chain in configs/rflow_ms.py (its VAE:
configs/vae3d_ms.py with --config.data.dataset=adni). The prompt swap goes from "Subject is
cognitively normal" to "Subject has Alzheimer's disease". The toy variant: 16^3 volumes, a
tiny 3-D text UNet; --config.vae.checkpoint=WORKDIR of the toy VAE, or an untrained VAE."""

import ml_collections

from jaxcf.training.config import is_toy, maisi_latent_config, maisi_latent_toy


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: None (the paper's recipe) | "toy" (its CPU-test size)."""
    toy = is_toy(arg)
    c = maisi_latent_config("adni", "rflow")
    return maisi_latent_toy(c) if toy else c
