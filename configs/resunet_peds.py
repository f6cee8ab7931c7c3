"""Paper 002's coarse segmenter: MONAI's 3-D residual U-Net (widths 16-256, four halvings,
two-convolution residual units; Eq. 1) on BraTS-PEDs, four sequences in, four classes out
(background, NC, ED, ET), trained with Soft Dice (Eq. 2) on balanced 96^3 crops, AdamW
1e-4, weight decay 1e-5, batch 4 (Table 1; jaxcf.training.config.segmentation_config).

    python -m jaxcf.train --config=configs/resunet_peds.py --workdir=runs/resunet \\
        --config.data.root=/data/BraTS-PEDs

Variants (--config=configs/resunet_peds.py:VARIANT):
  toy        16^3 crops of 4 procedural phantom volumes, the toy Res U-Net, 10 steps (tests).
  phantom48  the coarse model of the README's phantom proof: 60 BraTS-PEDs phantoms at 48^3
             (jaxcf.training.config.peds_phantom48_data), 32^3 crops, a three-level Res
             U-Net (16-128 wide), AdamW 1e-3.
"""

import ml_collections

from jaxcf.training.config import apply_toy, is_toy, peds_phantom48_data, segmentation_config

PHANTOM48 = "phantom48"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: None (paper 002's recipe) | "toy" (its CPU-test size) | "phantom48"."""
    c = segmentation_config("resunet", "peds", batch_size=4)
    proof = arg == PHANTOM48
    if proof or is_toy(arg):
        apply_toy(c, preset="toy")
        c.data.update(dataset="brats-peds", task="seg3d")
        c.optim.lr = 1e-3
    if proof:
        peds_phantom48_data(c)
        c.model.preset = "small"
        c.train.update(num_steps=1200, log_every=50, checkpoint_every=300)
    return c
