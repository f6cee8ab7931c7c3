"""Language-guided 3-D WDM (paper 004) on MS FLAIR by lesion load; the recipe is documented in
jaxcf.training.config.language_wdm_config.

Variants (--config=configs/wdm_ms.py:VARIANT):
  toy        16^3 volumes, the tiny text-conditioned WDM, 10 steps (tests).
  phantom32  the README's phantom proof on 2 CPU cores: 32^3 MS phantoms (48 cases), the
             tiny text WDM reading the prompt at both of its feature-map sizes (16^3 and
             8^3 on the 16^3 wavelet grid) with its prompt encoder, batch 4, AdamW 1e-3,
             EMA 0.995, 3000 steps; prompt swaps with 25 DDIM steps.
"""

import ml_collections

from jaxcf.training.config import apply_toy, is_toy, language_wdm_config, phantom32_data

PHANTOM32 = "phantom32"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    proof = arg == PHANTOM32
    toy = proof or is_toy(arg)
    c = language_wdm_config("ms")
    if not toy:
        return c
    apply_toy(c, preset="wdm_tiny_text")
    if proof:
        phantom32_data(c)
        # 32^3 volumes -> a 16^3 wavelet grid: feature maps 16 and 8, text read at both.
        c.model.cross_attention_resolutions = (16, 8)
        c.optim.update(lr=1e-3, ema_decay=0.995)
        c.train.update(num_steps=3000, log_every=100, checkpoint_every=500)
        c.counterfactual.prompt_swap.num_steps = 25
        c.sampler.num_steps = 25
    return c
