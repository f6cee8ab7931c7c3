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

Variants:
  toy        16^3 volumes, a tiny 3-D text UNet on 4^3 x 4 latents; also runs on an
             untrained VAE (vae.allow_untrained, as configs/pcf_dit_brats.py:toy); give it
             --config.vae.checkpoint=WORKDIR of configs/vae3d_ms.py:toy for a meaningful
             latent space.
  phantom32  the README's phantom proof on 2 CPU cores: the 32^3 MS phantoms of
             configs/wdm_ms.py:phantom32 on the 8^3 x 4 latents of configs/vae3d_ms.py:phantom32
             (give its workdir as --config.vae.checkpoint and 1 / its latent_std as
             --config.vae.scaling_factor: README, 0.5589), a small 3-D text UNet (32
             channels, levels 8^3 and 4^3, cross-attention at both, self-attention at 4^3),
             AdamW 1e-3, EMA 0.995, 6000 steps; Euler 30 steps as the recipe.
"""

import ml_collections

from jaxcf.training.config import is_toy, maisi_latent_config, maisi_latent_toy, phantom32_data

PHANTOM32 = "phantom32"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: None (the paper's recipe) | "toy" (its CPU-test size) | "phantom32"."""
    proof = arg == PHANTOM32
    toy = proof or is_toy(arg)
    c = maisi_latent_config("ms", "rflow")
    if not toy:
        return c
    maisi_latent_toy(c)
    if proof:
        phantom32_data(c)
        c.vae.update(preset="mri3d_small", allow_untrained=False)
        c.model.update(
            model_channels=32,
            attention_resolutions=(4,),
            cross_attention_resolutions=(8, 4),
        )
        c.optim.update(lr=1e-3, ema_decay=0.995)
        c.train.update(num_steps=6000, log_every=100, checkpoint_every=500)
        c.sampler.num_steps = 30
        c.counterfactual.prompt_swap.num_steps = 30
    return c
