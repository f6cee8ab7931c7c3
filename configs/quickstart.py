"""Quickstart: a small Diff-SCM-style UNet on phantom BraTS 2021 slices, minutes on a CPU.

python -m jaxcf.train --config=configs/quickstart.py --workdir=runs/quickstart
(`make demo` trains this, then segments held-out slices; see jaxcf/demo.py.)

Sized for the 10-minute budget of `make demo` on 2 CPU cores: 32 px slices, a 16-channel
UNet with Diff-SCM's label-token attention and condition dropout 0.35, a higher learning
rate and a shorter EMA than the paper's 50k-step recipe (configs/diffscm_brats.py), and
50 respaced steps for the counterfactuals instead of 100.

configs/quickstart.py:toy (python -m jaxcf.demo --toy) is the same pipeline in seconds:
16 px slices of 8 phantom cases, 30 steps, 10-step counterfactuals of at most 16 slices.
"""

import ml_collections

from jaxcf.training.config import apply_toy, base_config, is_toy, pixel_shape


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: None (the demo) | "toy" (its test size)."""
    toy = is_toy(arg)
    c = base_config()
    c.data.dataset = "brats2021"
    c.data.task = "slices2d"
    c.data.image_size = 32
    c.data.batch_size = 16
    c.data.phantom.cases = 24
    c.data.phantom.size = 64
    c.data.phantom.tumour_free_fraction = 0.0  # every BraTS 2021 patient has a tumour
    c.model.update(
        family="unet",
        preset="tiny2d",
        num_classes=2,
        model_channels=16,
        channel_mult=(1, 2, 2),
        **pixel_shape(c),
    )
    c.diffusion.update(condition="label", cond_drop_prob=0.35)  # Diff-SCM's dropout
    c.optim.update(lr=1e-3, warmup_steps=50, weight_decay=0.01, ema_decay=0.995)
    c.train.update(num_steps=700, log_every=50, checkpoint_every=350, sample_every=350)
    c.sampler.update(num_steps=50, guidance_scale=3.0)
    c.counterfactual.batch_size = 24
    c.counterfactual.diffscm.num_steps = 50
    c.counterfactual.promptable.num_steps = 50
    # Paper 001's protocol (Sec. 4): every slice of every test case, healthy ones included,
    # scored at twice the training size (Diff-SCM: trained at 64, scored at 128; here 32 and
    # 64, the phantoms' own resolution).
    c.eval.update(slices="all", image_size=64, max_items=0)
    if toy:
        apply_toy(c)
        # The demo evaluates the test split: enough cases for one with a tumour in it.
        c.data.batch_size = 8
        c.data.phantom.cases = 8
        c.train.update(num_steps=30, log_every=10, checkpoint_every=30)
        c.counterfactual.batch_size = 16
        c.eval.update(image_size=0, max_items=16)  # scored at the model's 16 px
    return c
