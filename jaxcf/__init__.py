"""jaxcf: counterfactual diffusion for medical imaging in JAX/Flax."""

__version__ = "0.1.0"
