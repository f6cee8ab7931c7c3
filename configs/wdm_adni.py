"""Language-guided 3-D wavelet diffusion (Mohamed et al. 2025) on ADNI diagnosis
(CN / MCI / AD): WDM
(Friedrich et al. 2024) on 128^3 volumes in the Haar wavelet domain, x0-prediction, 1000
linear steps, with Simple Diffusion's deeper bottleneck, low-resolution dropout and
cross-attention to prompt tokens at several scales; null prompt 20% of the time;
class-balanced sampling; batch 1; AdamW 1e-5 (WDM); DDIM 25 steps for samples.

The prompt encoder is, for now, a small transformer trained with the model on the
dataset's own prompts (text.encoder = "trainable") or embeddings read from a file
(text.encoder = "file", text.file = PATH): pretrained BiomedCLIP comes later."""

from jaxcf.training.config import language_wdm_config


def get_config():
    return language_wdm_config("adni")
