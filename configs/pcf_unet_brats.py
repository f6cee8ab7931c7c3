"""Promptable counterfactual diffusion, pixel-space UNet (Shen et al. 2024): BraTS 2021
128x128 slices, four modalities, healthy / tumour, AdamW 1e-4, batch 128, 15k steps. The
paper gives no network or dropout settings: Diff-SCM's 128 px UNet and DiT's class dropout
0.1 (so that the null label exists for guidance)."""

import ml_collections

from jaxcf.training.config import apply_toy, base_config, is_toy, pixel_shape


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: None (the paper's recipe) | "toy" (its CPU-test size: a tiny UNet on 16 px)."""
    toy = is_toy(arg)
    c = base_config()
    c.data.update(dataset="brats2021", task="slices2d", image_size=128, batch_size=128)
    c.model.update(family="unet", preset="pcf_unet_brats128", num_classes=2, **pixel_shape(c))
    c.diffusion.update(
        schedule="linear",
        prediction="eps",
        variance="fixed_large",
        condition="label",
        cond_drop_prob=0.1,
    )
    c.optim.update(lr=1e-4, weight_decay=0.0, grad_clip=0.0)
    c.train.update(num_steps=15_000, checkpoint_every=2_500, sample_every=2_500)
    c.sampler.update(num_steps=100, guidance_scale=3.0)
    return apply_toy(c, preset="tiny2d") if toy else c
