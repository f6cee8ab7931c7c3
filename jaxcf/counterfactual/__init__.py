"""jaxcf.counterfactual: published counterfactual methods composed from jaxcf.diffusion.

    diffscm      Diff-SCM (Sanchez et al. 2022): DDIM-encode with the null condition, decode
                 with classifier-free guidance toward the target, dynamic normalisation.
    promptable   Promptable counterfactual diffusion (Shen et al. 2024): mask-prompted
                 ancestral sampling, tumour removal / regeneration / position transfer.

Each method takes a `model_fn(x_t, t, cond)` and a Schedule, returns a dict with at least
"counterfactual" (B, ..., C) and "heatmap" (B, ...), and has a `make_*` factory that
compiles the whole counterfactual into one jitted function.
"""

from jaxcf.counterfactual.diffscm import difference_map, diffscm, make_diffscm
from jaxcf.counterfactual.promptable import (
    as_region,
    latent_region,
    make_promptable,
    mask_prompt_hook,
    position_transfer,
    promptable_counterfactual,
    promptable_sample,
    random_region,
    regenerate,
    remove,
)

__all__ = [
    "as_region",
    "difference_map",
    "diffscm",
    "latent_region",
    "make_diffscm",
    "make_promptable",
    "mask_prompt_hook",
    "position_transfer",
    "promptable_counterfactual",
    "promptable_sample",
    "random_region",
    "regenerate",
    "remove",
]
