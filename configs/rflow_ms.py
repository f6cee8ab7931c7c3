"""MAISI RFlow (paper 004, Sec. 2.2, Table 1) on MS FLAIR by lesion load: a text-conditioned
3-D UNet on the latents of a frozen 3-D VAE, MONAI's rectified flow as MAISI configures it
(1000 training timesteps, continuous t, uniform t with the resolution-dependent shift,
velocity target, Euler 30 steps); the recipe is documented in
jaxcf.training.config.maisi_latent_config.

Set vae.checkpoint to the workdir of configs/vae3d_ms.py (the chain: train the VAE, train
this model on its latents, then the prompt swap):

    python -m jaxcf.train --config=configs/vae3d_ms.py --workdir=runs/vae3d_ms
    python -m jaxcf.train --config=configs/rflow_ms.py --workdir=runs/rflow_ms \\
        --config.vae.checkpoint=runs/vae3d_ms
    python -m jaxcf.counterfactual --method=prompt_swap --config=configs/rflow_ms.py \\
        --checkpoint=runs/rflow_ms --out=runs/rflow_ms/swap --count=4

The toy variant (16^3 volumes, a tiny 3-D text UNet on 4^3 x 4 latents) also runs on an
untrained VAE (vae.allow_untrained, as configs/pcf_dit_brats.py:toy); give it
--config.vae.checkpoint=WORKDIR of configs/vae3d_ms.py:toy for a meaningful latent space.
"""

import ml_collections

from jaxcf.training.config import is_toy, maisi_latent_config, maisi_latent_toy


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: None (the paper's recipe) | "toy" (its CPU-test size)."""
    toy = is_toy(arg)
    c = maisi_latent_config("ms", "rflow")
    return maisi_latent_toy(c) if toy else c
