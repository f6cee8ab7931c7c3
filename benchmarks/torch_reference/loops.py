"""The PyTorch side of the benchmark's sampling and training workloads, written as a
PyTorch user would: a diffusers scheduler loop and a hand-written training step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def ddim_cfg_sample(
    model: nn.Module,
    scheduler: Any,
    x_T: torch.Tensor,
    labels: torch.Tensor,
    *,
    null_label: int,
    scale: float,
    steps: int,
) -> torch.Tensor:
    """DDIM (a diffusers DDIMScheduler) with classifier-free guidance: each step runs the
    conditional and the unconditional prediction in one forward on the doubled batch, then
    eps = uncond + scale (cond - uncond) (Ho & Salimans 2022)."""
    scheduler.set_timesteps(steps)
    pair_labels = torch.cat([labels, torch.full_like(labels, null_label)])
    sample = x_T
    for t in scheduler.timesteps:
        out = model(torch.cat([sample, sample]), t.expand(2 * len(sample)), pair_labels)
        cond_out, uncond_out = out.chunk(2)
        eps = uncond_out + scale * (cond_out - uncond_out)
        sample = scheduler.step(eps, t, sample).prev_sample
    return sample


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the parameters' gradients."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))


class TrainStep:
    """One eps-prediction training step (Ho et al. 2020, Alg. 1): draw t and noise, form
    x_t, MSE against the noise, backward, AdamW, then an EMA of the weights and the
    gradient norm (what jaxcf's make_train_step also computes). The model stays in train
    mode, so its dropout is active."""

    def __init__(
        self,
        model: nn.Module,
        alphas_cumprod: torch.Tensor,
        *,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        ema_decay: float,
    ):
        self.model, self.abar, self.ema_decay = model, alphas_cumprod, ema_decay
        self.params = list(model.parameters())
        self.ema = [p.detach().clone() for p in self.params]
        self.opt = torch.optim.AdamW(
            self.params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay
        )

    def __call__(self, x0: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.model.train()
        t = torch.randint(0, len(self.abar), (len(x0),))
        noise = torch.randn_like(x0)
        a = self.abar[t].view(-1, *(1,) * (x0.ndim - 1))
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(self.model(x_t, t, labels), noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = grad_norm(self.params)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, self.params, 1.0 - self.ema_decay)
        return loss.detach(), norm


def loss_and_grad_norm(
    model: nn.Module, forward: Callable[[nn.Module], torch.Tensor], target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE(forward(model), target) and its gradient norm, from zeroed gradients (the
    benchmark's parity check of the training graph); the gradients are cleared afterwards."""
    model.zero_grad(set_to_none=True)
    loss = F.mse_loss(forward(model), target)
    loss.backward()
    norm = grad_norm(list(model.parameters()))
    model.zero_grad(set_to_none=True)
    return loss.detach(), norm
