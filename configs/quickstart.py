"""Quickstart: a small Diff-SCM-style UNet on phantom BraTS 2021 slices, minutes on a CPU.

python -m jaxcf.train --config=configs/quickstart.py --workdir=runs/quickstart
(`make demo` trains this, then segments held-out slices; see jaxcf/demo.py.)

Sized for the 10-minute budget of `make demo` on 2 CPU cores: 32 px slices, a 16-channel
UNet with Diff-SCM's label-token attention and condition dropout 0.35, a higher learning
rate and a shorter EMA than the paper's 50k-step recipe (configs/diffscm_brats.py), and
50 respaced steps for the counterfactuals instead of 100.
"""

from jaxcf.training.config import base_config


def get_config():
    c = base_config()
    c.data.dataset = "brats2021"
    c.data.task = "slices2d"
    c.data.image_size = 32
    c.data.batch_size = 16
    c.data.phantom.cases = 24
    c.data.phantom.size = 64
    c.model.update(
        family="unet",
        preset="tiny2d",
        image_size=32,
        in_channels=4,
        num_classes=2,
        model_channels=16,
        channel_mult=(1, 2, 2),
    )
    c.diffusion.update(condition="label", cond_drop_prob=0.35)  # Diff-SCM's dropout
    c.optim.update(lr=1e-3, warmup_steps=50, weight_decay=0.01, ema_decay=0.995)
    c.train.update(num_steps=700, log_every=50, checkpoint_every=350, sample_every=350)
    c.sampler.update(num_steps=50, guidance_scale=3.0)
    c.counterfactual.batch_size = 24
    c.counterfactual.diffscm.num_steps = 50
    c.counterfactual.promptable.num_steps = 50
    c.eval.max_items = 48
    return c
