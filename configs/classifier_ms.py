"""Paper 004's text-alignment judge on MS FLAIR: a 3-D DenseNet-121 classifying lesion load
(minimal / moderate / high) on the language-guided WDM's volumes; the recipe is documented
in jaxcf.training.config.classifier_config. Measure alignment with
jaxcf.evaluation.alignment on the trained workdir.

Variants (--config=configs/classifier_ms.py:VARIANT):
  toy        16^3 volumes, a tiny DenseNet (two blocks), 10 steps (tests).
  phantom32  the judge of configs/wdm_ms.py:phantom32 on 2 CPU cores: exactly its data
             (32^3 MS phantoms, 48 cases, batch 4), a small DenseNet (16 initial features,
             growth 8, blocks 2-3-4), random flips, AdamW 1e-3, EMA 0.99, 1500 steps:
             about 3 minutes; 13 of the 14 held-out val + test phantoms right
             (jaxcf.evaluation.alignment: Classifier.split_accuracy).
"""

import ml_collections

from jaxcf.training.config import apply_toy, classifier_config, is_toy, phantom32_data

PHANTOM32 = "phantom32"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    proof = arg == PHANTOM32
    toy = proof or is_toy(arg)
    c = classifier_config("ms")
    if not toy:
        return c
    apply_toy(c, preset="densenet_tiny3d")
    c.optim.lr = 1e-3
    if proof:
        # configs/wdm_ms.py:phantom32's data, field for field (tests/test_classifier.py).
        phantom32_data(c)
        c.data.augment = True  # flips: the training stream only, not the prepared volumes
        c.model.preset = "densenet_small3d"
        c.optim.update(lr=1e-3, ema_decay=0.99)
        c.train.update(num_steps=1500, log_every=50, checkpoint_every=500)
    return c
