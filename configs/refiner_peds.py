"""Paper 002's 3-D diffusion refiner (Sec. 3.3, Table 2): diffusion over the one-hot label
map of BraTS-PEDs crops, x0-parameterised, cosine schedule T = 1000, input [I; Y_t; C]
with C the coarse segmenter's class probabilities (refiner.coarse: a workdir trained with
configs/resunet_peds.py or configs/swinunetr_peds.py; empty: the unconditional refiner on
[I; Y_t]), loss DiceCE + 0.1 * boundary-weighted MSE (Eq. 9, w = 3 on class edges), AdamW
1e-4, weight decay 1e-5, linear warm-up then cosine to 1e-6, clipping at 1.0, batch 2 of
96^3 crops (jaxcf.training.refine_task). Sampling: counterfactual.refine (the prior
injected at t' and a few DDIM steps).

    python -m jaxcf.train --config=configs/resunet_peds.py --workdir=runs/coarse \\
        --config.data.root=/data/BraTS-PEDs
    python -m jaxcf.train --config=configs/refiner_peds.py --workdir=runs/refiner \\
        --config.data.root=/data/BraTS-PEDs --config.refiner.coarse=runs/coarse
    python -m jaxcf.evaluate --config=configs/refiner_peds.py --checkpoint=runs/refiner \\
        --method=refine

Variants (--config=configs/refiner_peds.py:VARIANT):
  toy        16^3 crops of 4 procedural phantom volumes, a tiny 3-D UNet, 10 steps (tests).
  phantom48  the refiner of the README's phantom proof, on configs/resunet_peds.py:phantom48's
             data (set refiner.coarse to that run): 32^3 crops, an 8-wide 3-D UNet without
             attention (refiner_small), AdamW 1e-3 with 100 warm-up steps and cosine decay
             over 1200 steps.
"""

import ml_collections

from jaxcf.data.config import follow
from jaxcf.training.config import (
    apply_toy,
    is_toy,
    peds_phantom48_data,
    refiner_in_channels,
    segmentation_config,
)

PHANTOM48 = "phantom48"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: None (paper 002's recipe) | "toy" (its CPU-test size) | "phantom48"."""
    c = segmentation_config("unet", "refiner_peds", batch_size=2, in_channels=refiner_in_channels)
    c.train.task = "refiner"
    c.diffusion.update(schedule="cosine", num_timesteps=1000, prediction="x0")
    c.model.image_size = follow(c.data, "crop_size")
    c.optim.update(
        schedule="cosine", warmup_steps=1000, min_lr_ratio=0.01, grad_clip=1.0, weight_decay=1e-5
    )
    c.train.num_steps = 100_000
    proof = arg == PHANTOM48
    if proof or is_toy(arg):
        apply_toy(c, preset="tiny3d")
        c.data.update(dataset="brats-peds", task="seg3d")
        c.optim.update(lr=1e-3, warmup_steps=2)
    if proof:
        peds_phantom48_data(c)
        c.model.preset = "refiner_small"
        c.optim.warmup_steps = 100
        c.train.update(num_steps=1200, log_every=50, checkpoint_every=300)
        c.eval.max_items = 0  # every test volume
    return c
