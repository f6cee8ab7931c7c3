"""The noise schedule a config's diffusion group describes (shared by every diffusion task)."""

from __future__ import annotations

from typing import Any

from jaxcf import diffusion as D
from jaxcf.errors import InputError


def make_schedule(diffusion: Any) -> D.Schedule:
    kind = diffusion.schedule
    common = dict(prediction=diffusion.prediction)
    # beta_start / beta_end: 0 keeps the schedule's own (DDPM's 1e-4, 0.02; SD's 0.00085,
    # 0.012); only the beta schedules have them.
    betas = {k: float(diffusion.get(k, 0.0)) for k in ("beta_start", "beta_end")}
    betas = {k: v for k, v in betas.items() if v}
    if betas and kind not in ("linear", "scaled_linear"):
        raise InputError(
            f"diffusion.{next(iter(betas))} applies to linear / scaled_linear betas, not to "
            f"diffusion.schedule={kind!r}"
        )
    if kind == "rectified_flow":
        return D.rectified_flow(diffusion.num_timesteps, shift=diffusion.shift, **common)
    makers = {"linear": D.linear, "cosine": D.cosine, "scaled_linear": D.scaled_linear}
    if kind not in makers:
        raise InputError(
            f"diffusion.schedule must be one of {[*makers, 'rectified_flow']}, got {kind!r}"
        )
    return makers[kind](diffusion.num_timesteps, variance=diffusion.variance, **betas, **common)
