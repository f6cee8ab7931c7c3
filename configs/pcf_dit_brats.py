"""Promptable counterfactual diffusion, latent DiT-B/2 (Shen et al. 2024): 128x128 BraTS
slices through the Stable Diffusion VAE, each modality replicated to three channels and
encoded separately (4 x 4 = 16 latent channels at 16x16), DiT-B/2 with learned sigma and
class dropout 0.1, AdamW 1e-4, batch 128, 15k steps.

Set vae.checkpoint to the SD VAE (a diffusers AutoencoderKL folder or .safetensors, e.g.
stabilityai/sd-vae-ft-mse) or to a workdir trained with configs/vae_brats.py (then also
--config.vae.preset=mri4 --config.model.in_channels=4). Without it the run is refused;
--config.vae.allow_untrained=True runs it on an untrained VAE, whose latents mean nothing
(smoke tests only)."""

from jaxcf.training.config import base_config


def get_config():
    c = base_config()
    c.data.update(dataset="brats2021", task="slices2d", image_size=128, batch_size=128)
    c.model.update(
        family="dit", preset="pcf_dit_brats128", in_channels=16, input_size=16, num_classes=2
    )
    c.vae.update(preset="sd", checkpoint="", mode="auto")
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
    return c
