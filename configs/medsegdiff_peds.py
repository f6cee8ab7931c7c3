"""Paper 002's MedSegDiff (Sec. 3.4, Table 2): a 2-D diffusion segmenter on axial slices of
BraTS-PEDs volumes with a highway (calibration) network and FF-Parsers
(jaxcf.models.medsegdiff), linear schedule T = 1000, noise prediction on the mask channels,
input [I; s_t; C] with C the coarse segmenter's class probabilities (refiner.coarse: a
workdir trained with configs/resunet_peds.py or configs/swinunetr_peds.py; empty: the
unconditional "scratch" variant on [I; s_t]), loss eps-MSE + 10 * DiceCE of the calibration
map (Eq. 12), AdamW 4e-4 without weight decay, 32 slices per batch (4 crops of 128^3,
8 axial slices each: the 128 x 128 slices of Table 2, their prior computed on the 3-D crop;
jaxcf.training.medsegdiff_task). Sampling: counterfactual.medsegdiff (DPM-Solver++ fused
with the calibration map), slice by slice over whole volumes.

    python -m jaxcf.train --config=configs/resunet_peds.py --workdir=runs/coarse \\
        --config.data.root=/data/BraTS-PEDs
    python -m jaxcf.train --config=configs/medsegdiff_peds.py --workdir=runs/medsegdiff \\
        --config.data.root=/data/BraTS-PEDs --config.refiner.coarse=runs/coarse
    python -m jaxcf.evaluate --config=configs/medsegdiff_peds.py \\
        --checkpoint=runs/medsegdiff --method=refine

Variants (--config=configs/medsegdiff_peds.py:VARIANT):
  toy        16^3 crops of 4 procedural phantom volumes, the toy MedSegDiff, 10 steps (tests).
  phantom48  the README's phantom proof, on configs/resunet_peds.py:phantom48's data (set
             refiner.coarse to that run): 32^3 crops, 8 slices each (32 x 32), the
             medsegdiff_small network, AdamW 1e-3, 1200 steps.
"""

import ml_collections

from jaxcf.data.config import derived, follow
from jaxcf.training.config import (
    apply_toy,
    has_prior,
    is_toy,
    peds_phantom48_data,
    segmentation_config,
)

PHANTOM48 = "phantom48"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: None (paper 002's recipe) | "toy" (its CPU-test size) | "phantom48"."""
    c = segmentation_config("medsegdiff", "medsegdiff_peds", batch_size=4)
    c.train.task = "medsegdiff"
    c.data.crop_size = 128
    c.model.update(
        in_channels=None,  # MedSegDiff's inputs follow image_channels and prior
        out_channels=None,
        image_channels=follow(c.data, "channels"),
        prior=derived(has_prior, c.refiner.get_ref("coarse"), field_type=bool),
    )
    c.diffusion.update(schedule="linear", num_timesteps=1000, prediction="eps")
    c.optim.update(lr=4e-4, weight_decay=0.0)
    c.train.num_steps = 100_000
    proof = arg == PHANTOM48
    if proof or is_toy(arg):
        apply_toy(c, preset="toy")
        c.data.update(dataset="brats-peds", task="seg3d")
        c.medsegdiff.slices_per_crop = 4
        c.optim.update(lr=1e-3)
    if proof:
        peds_phantom48_data(c)
        c.model.preset = "medsegdiff_small"
        c.medsegdiff.slices_per_crop = 8
        c.train.update(num_steps=1200, log_every=50, checkpoint_every=300)
        c.eval.max_items = 0  # every test volume
    return c
