"""Paper 003's pathology judge on chest X-rays: a 2-D DenseNet-121 classifying opacity
(normal 0 / opacity 1) on one-channel radiographs, whose confidence on the counterfactual
images is the paper's "Conf" metric. Paper 003 does not give its classifier's recipe; this
one is jaxcf's (train.task = "classifier", the 3-D judge's recipe of
jaxcf.training.config.classifier_config moved to 2-D):

  data   data.dataset / task "cxr" (configs/sd_cxr.py): 512 px radiographs in [-1, 1]
         (MIMIC-CXR-JPG with data.root; CXR phantoms without), their opacity label,
         class-balanced batches of 16; prompt_max_len as sd_cxr's, so the prepared shards
         can be shared (--config.data.prepared=...).
  model  densenet121_2d (GroupNorm: jaxcf.models.densenet), its side following
         data.image_size, 2 classes.
  optim  cross-entropy, AdamW 1e-4, weight decay 1e-5, clipping at 1.0, EMA 0.999,
         15k steps.

Measure it with jaxcf.evaluation.alignment (load_classifier(workdir): predict on
(N, S, S, 1) radiographs, split_accuracy on real ones).

Variants (--config=configs/classifier_cxr.py:VARIANT):
  toy        16 px radiographs of 4 phantoms, a tiny DenseNet (two blocks), 10 steps (tests).
  phantom64  the judge of configs/sd_cxr.py:phantom64 on 2 CPU cores: exactly its data
             (jaxcf.training.config.cxr_phantom64_data: 64 px CXR phantoms, 480 cases, 40%
             normal, batch 16), a small DenseNet (16 initial features, growth 8, blocks
             2-3-4), AdamW 1e-3, EMA 0.99, 8000 steps: about 5 minutes (measured at
             about 30 steps/s on 2 shared CPU cores); 86% of the 72 val and 89% of the 72
             test phantoms right (Classifier.split_accuracy; the training batches are fit
             exactly from about step 1000 on).
"""

import ml_collections

from jaxcf.data.config import derived, follow
from jaxcf.training.config import (
    apply_toy,
    base_config,
    cxr_phantom64_data,
    is_toy,
    num_labels,
)

PHANTOM64 = "phantom64"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """arg: None (jaxcf's 512 px recipe) | "toy" (its CPU-test size) | "phantom64"."""
    proof = arg == PHANTOM64
    toy = proof or is_toy(arg)
    c = base_config()
    c.train.task = "classifier"
    c.data.update(dataset="cxr", task="cxr", image_size=512, batch_size=16, balanced=True)
    c.data.phantom.update(size=512, anatomy="procedural")  # the CXR phantoms' only anatomy
    c.model.update(
        family="densenet",
        preset="densenet121_2d",
        image_size=follow(c.data, "image_size"),
        in_channels=follow(c.data, "channels"),
        num_classes=derived(num_labels, c.data.get_ref("dataset")),
    )
    c.optim.update(lr=1e-4, weight_decay=1e-5, grad_clip=1.0, ema_decay=0.999)
    c.train.update(num_steps=15_000, log_every=50, checkpoint_every=1_500, sample_every=0)
    if not toy:
        return c
    apply_toy(c, preset="densenet_tiny2d")
    c.data.phantom.size = 16
    c.optim.lr = 1e-3
    if proof:
        cxr_phantom64_data(c)  # configs/sd_cxr.py:phantom64's data, field for field
        c.model.preset = "densenet_small2d"
        c.optim.update(lr=1e-3, ema_decay=0.99)
        c.train.update(num_steps=8000, log_every=100, checkpoint_every=1000)
    return c
