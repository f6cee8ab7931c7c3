"""jaxcf.counterfactual: published counterfactual methods composed from jaxcf.diffusion.

    diffscm      Diff-SCM (Sanchez et al. 2022): DDIM-encode with the null condition, decode
                 with classifier-free guidance toward the target, dynamic normalisation.
    promptable   Promptable counterfactual diffusion (Shen et al. 2024): mask-prompted
                 ancestral sampling, tumour removal / regeneration / position transfer.

Each method is a plug-in (see `registry`): `default_config()` and
`build(model, cfg) -> fn(weights, batch, key) -> dict`, looked up by name. The functional
forms (`diffscm`, `promptable_counterfactual`) take a `model_fn(x_t, t, cond)`; the `make_*`
factories compile a whole counterfactual into one jitted function with the weights as its
first argument. `runner.MethodRunner` applies a method to arrays of any length on a mesh.
"""

from jaxcf.counterfactual import registry
from jaxcf.counterfactual.diffscm import difference_map, diffscm, make_diffscm
from jaxcf.counterfactual.model import MethodModel, null_label
from jaxcf.counterfactual.promptable import (
    as_region,
    latent_region,
    make_promptable,
    mask_prompt_hook,
    position_transfer,
    promptable_counterfactual,
    promptable_sample,
    regenerate,
    remove,
)
from jaxcf.counterfactual.prompts import (
    box_regions,
    heatmap_box,
    peak_heat,
    prompt_regions,
    random_region,
)
from jaxcf.counterfactual.runner import MethodRunner

__all__ = [
    "MethodModel",
    "MethodRunner",
    "as_region",
    "box_regions",
    "difference_map",
    "diffscm",
    "heatmap_box",
    "latent_region",
    "make_diffscm",
    "make_promptable",
    "mask_prompt_hook",
    "null_label",
    "peak_heat",
    "position_transfer",
    "prompt_regions",
    "promptable_counterfactual",
    "promptable_sample",
    "random_region",
    "regenerate",
    "registry",
    "remove",
]
