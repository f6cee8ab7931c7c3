"""Paper 004's text-alignment judge on ADNI T1: a 3-D DenseNet-121 classifying the diagnosis
(CN / MCI / AD) on the language-guided WDM's volumes; the recipe is documented in
jaxcf.training.config.classifier_config. The toy variant: 16^3 volumes, a tiny DenseNet
(two blocks), 10 steps."""

import ml_collections

from jaxcf.training.config import apply_toy, classifier_config, is_toy


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    toy = is_toy(arg)
    c = classifier_config("adni")
    if toy:
        apply_toy(c, preset="densenet_tiny3d")
        c.optim.lr = 1e-3
    return c
