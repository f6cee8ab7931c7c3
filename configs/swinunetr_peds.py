"""Paper 002's transformer segmenter: MONAI's Swin-UNETR (feature size 48, depths 2-2-2-2,
heads 3-6-12-24, windows of 7) on BraTS-PEDs, four sequences in, four classes out
(background, NC, ED, ET), trained with Soft Dice (Eq. 7) on balanced 96^3 crops, AdamW
1e-4, weight decay 1e-5, batch 2 (Table 1; jaxcf.training.config.segmentation_config).
The paper fine-tunes from pretrained weights: --config.model.checkpoint=FILE reads a MONAI
SwinUNETR state dict with the same layout (jaxcf.convert.swin_unetr). MONAI's BraTS 2021
weights predict 3 channels (TC / WT / ET): add --config.model.checkpoint_out_channels=3 to
take every layer but the output from them and start a new 4-class head (without it the
checkpoint is refused by shape). The self-supervised encoder-only model_swinvit.pt has no
decoder to fill the network and is refused.

    python -m jaxcf.train --config=configs/swinunetr_peds.py --workdir=runs/swin \\
        --config.data.root=/data/BraTS-PEDs \\
        --config.model.checkpoint=/weights/swin_unetr_brats21_fold1.pt \\
        --config.model.checkpoint_out_channels=3

Variants (--config=configs/swinunetr_peds.py:VARIANT):
  toy  64^3 crops (Swin-UNETR halves five times) of 4 procedural phantom volumes, a
       12-wide Swin-UNETR with windows of 4, 10 steps (tests).
"""

import ml_collections

from jaxcf.training.config import apply_toy, is_toy, segmentation_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: None (paper 002's recipe) | "toy" (its CPU-test size)."""
    c = segmentation_config("swin_unetr", "peds", batch_size=2)
    if is_toy(arg):
        apply_toy(c, preset="toy")
        c.data.update(dataset="brats-peds", task="seg3d", crop_size=64, batch_size=1)
        c.optim.lr = 1e-3
    return c
