"""Diff-SCM on BraTS 2021 (Sanchez et al. 2022, Sec. 4 and reference code): 64x64 slices, four
modalities, healthy / tumour labels with attention conditioning, 1000 linear steps,
eps-prediction with fixed (large) variance, AdamW 1e-4, weight decay 0.01, batch 64, EMA
0.9999, 50k iterations, condition dropout 0.35.

Evaluation as the paper's (Sec. 4): every slice of every test patient (healthy ones
included) scored at 128x128, with the methods run at the model's 64x64 and their maps
resampled to 128 (docs/methods.md, "Evaluation protocols")."""

import ml_collections

from jaxcf.training.config import apply_toy, base_config, is_toy, pixel_shape


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: None (the paper's recipe) | "toy" (its CPU-test size: a tiny UNet on 16 px)."""
    toy = is_toy(arg)
    c = base_config()
    c.data.update(dataset="brats2021", task="slices2d", image_size=64, batch_size=64)
    c.model.update(family="unet", preset="diffscm_brats64", num_classes=2, **pixel_shape(c))
    # guided-diffusion with learn_sigma=False, sigma_small=False: FIXED_LARGE variance.
    c.diffusion.update(
        schedule="linear",
        prediction="eps",
        variance="fixed_large",
        condition="label",
        cond_drop_prob=0.35,
    )
    c.optim.update(lr=1e-4, weight_decay=0.01, ema_decay=0.9999, grad_clip=0.0)
    c.train.update(num_steps=50_000, checkpoint_every=5_000, sample_every=5_000)
    c.sampler.update(num_steps=100, guidance_scale=3.0)  # ddim100, w = 3
    # "All slices are downsampled to a resolution of 64x64 for training, but all evaluation
    # is done at 128x128", over "the whole test set" (paper 001 Sec. 4).
    c.eval.update(slices="all", image_size=128)
    if not toy:
        return c
    apply_toy(c, preset="tiny2d")
    c.eval.image_size = 2 * c.data.image_size  # the paper's ratio at the toy size
    return c
