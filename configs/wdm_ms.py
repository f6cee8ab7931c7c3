"""Language-guided 3-D WDM (paper 004) on MS FLAIR by lesion load; the recipe is documented in
jaxcf.training.config.language_wdm_config. The toy variant: 16^3 volumes, the tiny
text-conditioned WDM."""

import ml_collections

from jaxcf.training.config import apply_toy, is_toy, language_wdm_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    toy = is_toy(arg)
    c = language_wdm_config("ms")
    return apply_toy(c, preset="wdm_tiny_text") if toy else c
