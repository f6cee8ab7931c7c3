"""Language-guided 3-D WDM (paper 004) on MS FLAIR by lesion load; the recipe is documented in
jaxcf.training.config.language_wdm_config."""

from jaxcf.training.config import language_wdm_config


def get_config():
    return language_wdm_config("ms")
