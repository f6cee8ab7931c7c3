"""Paper 004's latent baselines, MAISI RFlow and MAISI Linear.

Parity (marked ref) with MONAI's RFlowScheduler as MAISI configures it (num_train_timesteps
1000, use_discrete_timesteps False, use_timestep_transform True, base 32^3, spatial_dim 3):
the inference time grid with and without the resolution-dependent shift, the noising and the
training target, one Euler step, and the uniform / logit-normal training draws with the shift;
and MONAI's DDPMScheduler betas for MAISI Linear. MONAI times are in units of
num_train_timesteps (t_monai = 1000 t) and its network predicts x0 - eps, the negative of
jaxcf's flow target eps - x0.

Then the command chain on toy sizes (configs/vae3d_ms.py -> configs/rflow_ms.py ->
python -m jaxcf.counterfactual --method=prompt_swap) and the other configs' construction.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from jaxcf import diffusion as D
from jaxcf.diffusion import process
from jaxcf.diffusion import schedules as S
from jaxcf.training.tasks import make_schedule, make_task

REPO = pathlib.Path(__file__).resolve().parents[1]
T = 1000  # MAISI's num_train_timesteps
BASE = 32**3  # MONAI's base_img_size_numel (MAISI's default)
# Latent spatial shapes: MAISI's 32^3 base (shift 1), jaxcf's toy 4^3 and 16^3 (shifts < 1),
# anisotropic and large ones (shifts > 1).
SHAPES = [(32, 32, 32), (4, 4, 4), (16, 16, 16), (64, 64, 32), (128, 128, 64)]
# MONAI stores inference timesteps as float16 (set_timesteps: np.float16), whose rounding
# moves a value by at most half an ulp: 2^-11 relative (plus jaxcf's float32 rounding).
FLOAT16_REL = 2.0**-11 + 1e-6


def _monai_rflow(**kwargs):
    schedulers = pytest.importorskip("monai.networks.schedulers")
    settings = dict(
        num_train_timesteps=T,
        use_discrete_timesteps=False,
        use_timestep_transform=True,
        base_img_size_numel=BASE,
        spatial_dim=3,
    )
    return schedulers.RFlowScheduler(**{**settings, **kwargs})


def _torch(a: np.ndarray):
    """Channels-last (B, D, H, W, C) numpy -> MONAI's channels-first torch tensor."""
    import torch

    return torch.from_numpy(np.moveaxis(a, -1, 1).copy())


def _channels_last(tensor) -> np.ndarray:
    return np.moveaxis(tensor.numpy(), 1, -1)


def _load_config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# ------------------------------------------------------------------ (a) the inference grid


@pytest.mark.ref
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("num_steps", [30, 10])
def test_inference_grid_with_the_resolution_shift_matches_monai(shape, num_steps):
    scheduler = _monai_rflow()
    import torch
    from monai.networks.schedulers.rectified_flow import timestep_transform

    numel = int(np.prod(shape))
    scheduler.set_timesteps(num_steps, input_img_size_numel=numel)
    # MAISI's sampling loop appends 0 as the last step's target.
    monai = np.concatenate([scheduler.timesteps.numpy().astype(np.float64), [0.0]]) / T
    shift = S.resolution_shift(shape, (32, 32, 32))
    assert shift == pytest.approx((numel / BASE) ** (1 / 3), rel=1e-12)
    ours = S.flow_times(num_steps, shift)
    assert ours.dtype == np.float32 and ours.shape == (num_steps + 1,)
    np.testing.assert_allclose(ours, monai, rtol=FLOAT16_REL, atol=0)
    # Exactly MONAI's arithmetic before its float16 cast: the same times to float32.
    exact = [
        float(
            timestep_transform(
                torch.tensor((1.0 - i / num_steps) * T, dtype=torch.float64),
                input_img_size_numel=numel,
                base_img_size_numel=BASE,
                num_train_timesteps=T,
                spatial_dim=3,
            )
        )
        for i in range(num_steps)
    ]
    np.testing.assert_allclose(ours[:-1], np.array(exact) / T, rtol=1e-6, atol=0)
    # The shift changes the grid unless the latent is the base size.
    plain = S.flow_times(num_steps)
    assert np.allclose(ours, plain) == (shape == (32, 32, 32))


@pytest.mark.ref
@pytest.mark.parametrize("num_steps", [30, 25, 7])
def test_inference_grid_without_the_shift_matches_monai(num_steps):
    scheduler = _monai_rflow(use_timestep_transform=False)
    scheduler.set_timesteps(num_steps)
    monai = np.concatenate([scheduler.timesteps.numpy().astype(np.float64), [0.0]]) / T
    np.testing.assert_allclose(S.flow_times(num_steps), monai, rtol=FLOAT16_REL, atol=0)


# ------------------------------------------------------------ noising and the training target


@pytest.mark.ref
def test_noising_and_target_are_monais_with_the_sign_flipped():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(3, 4, 4, 4, 4)).astype(np.float32)  # (B, D, H, W, C)
    noise = rng.normal(size=x0.shape).astype(np.float32)
    t = np.array([0.013, 0.5, 0.977], np.float32)
    schedule = S.rectified_flow(T)
    ours = process.q_sample(schedule, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))
    monai = _monai_rflow().add_noise(_torch(x0), _torch(noise), torch.from_numpy(t * T))
    np.testing.assert_allclose(np.asarray(ours), _channels_last(monai), atol=2e-6)
    # MAISI regresses the network onto x0 - noise (diffusion_model_train.py); jaxcf's target
    # is eps - x0, so a MAISI network's output is the negative of a jaxcf flow model's.
    target = process.prediction_from(schedule, jnp.asarray(x0), jnp.asarray(noise), t)
    np.testing.assert_allclose(np.asarray(target), -(x0 - noise), atol=1e-6)


# ------------------------------------------------------------------------ (b) the Euler step


def _trajectory(num_steps: int, shift: float, x_T: np.ndarray):
    """jaxcf's Euler steps of flow_sample with a smooth nonlinear velocity model:
    [(t, t_next, x_t, velocity, x_next)] in order."""
    schedule = S.rectified_flow(T, shift=shift)

    def model_fn(x, t, cond):
        return jnp.tanh(x) * (1.0 + t[:, None, None, None, None]) - 0.3 * x

    steps = []

    def record(x_next, x, t, t_next, key):
        velocity = model_fn(x, t, None)
        jax.debug.callback(
            lambda *a: steps.append(tuple(map(np.asarray, a))),
            t,
            t_next,
            x,
            velocity,
            x_next,
            ordered=True,
        )
        return x_next

    out = D.flow_sample(
        model_fn, schedule, jnp.asarray(x_T), num_steps=num_steps, hooks=D.StepHooks(after=record)
    )
    jax.block_until_ready(out)
    steps.sort(key=lambda s: -float(s[0][0]))
    assert len(steps) == num_steps
    np.testing.assert_array_equal(steps[-1][4], np.asarray(out))
    return steps


def _monai_grid(scheduler) -> list[tuple[float, float]]:
    """(t, t_next) pairs of MAISI's loop over a set RFlowScheduler, in MONAI's units."""
    times = [float(t) for t in scheduler.timesteps] + [0.0]
    return list(itertools.pairwise(times))


@pytest.mark.ref
def test_euler_step_matches_monai_on_an_integer_grid():
    rng = np.random.default_rng(1)
    x_T = rng.normal(size=(2, 4, 4, 4, 4)).astype(np.float32)
    # 25 steps of 1000: every t * T is an integer, where MONAI's step is plain Euler.
    scheduler = _monai_rflow(use_timestep_transform=False)
    scheduler.set_timesteps(25)
    grid = _monai_grid(scheduler)
    for (t, t_next, x, velocity, x_next), (t_m, next_m) in zip(
        _trajectory(25, 1.0, x_T), grid, strict=True
    ):
        assert (t_m, next_m) == (round(float(t[0]) * T), round(float(t_next[0]) * T))
        # The same model output (MONAI's network predicts v = x0 - eps, minus jaxcf's
        # velocity) and the same sample give the same next sample. Both form x + dt * v in
        # float32 with |x| + |dt v| < 4: a few float32 ulp, < 2e-6.
        monai, _ = scheduler.step(_torch(-velocity), t_m, _torch(x), next_m)
        np.testing.assert_allclose(x_next, _channels_last(monai), rtol=0, atol=2e-6)


@pytest.mark.ref
def test_euler_step_on_maisis_shifted_grid_differs_only_by_monais_integer_cast():
    """MAISI's grid is continuous (use_discrete_timesteps False), but RFlowScheduler.step
    casts next_timestep to int, so its dt is (t - floor(t_next)) / T: the state lands up to
    1 / T of time beyond t_next, where the next step still treats it as t_next. Open-Sora's
    RFLOW (which MONAI adapts) and Liu et al.'s Euler step use t - t_next, as jaxcf does, so
    jaxcf keeps the exact step. Checked per step: jaxcf = x + (t_next - t) v on its grid,
    MONAI = x + (floor(t_next) - t) v on its own (float16) grid, both to float32 precision."""
    rng = np.random.default_rng(2)
    x_T = rng.normal(size=(2, 4, 4, 4, 4)).astype(np.float32)
    shape = (64, 64, 32)
    scheduler = _monai_rflow()
    scheduler.set_timesteps(30, input_img_size_numel=int(np.prod(shape)))
    grid = _monai_grid(scheduler)
    truncated = 0
    for (t, t_next, x, velocity, x_next), (t_m, next_m) in zip(
        _trajectory(30, S.resolution_shift(shape), x_T), grid, strict=True
    ):
        x64, v64 = x.astype(np.float64), velocity.astype(np.float64)
        dt = float(t_next[0]) - float(t[0])
        np.testing.assert_allclose(x_next, x64 + dt * v64, rtol=0, atol=2e-6)
        monai, _ = scheduler.step(_torch(-velocity), t_m, _torch(x), next_m)
        dt_monai = (math.floor(next_m) - t_m) / T
        np.testing.assert_allclose(_channels_last(monai), x64 + dt_monai * v64, rtol=0, atol=2e-6)
        truncated += next_m != math.floor(next_m)
    # MONAI's float16 grid has half-integers above 512 and finer values below: the cast
    # changes 17 of these 30 steps.
    assert truncated == 17


# --------------------------------------------------------------- (c) the training draws


@pytest.mark.ref
@pytest.mark.parametrize("shape", SHAPES)
def test_uniform_training_draws_match_monai(shape, monkeypatch):
    torch = pytest.importorskip("torch")
    key, batch = jax.random.key(3), 64
    draws = np.asarray(jax.random.uniform(key, (batch,), jnp.float32))  # jaxcf's own draw
    monkeypatch.setattr(torch, "rand", lambda size, device=None: torch.from_numpy(draws.copy()))
    monai = _monai_rflow(sample_method="uniform").sample_timesteps(torch.zeros(batch, 4, *shape))
    schedule = S.rectified_flow(T, shift=S.resolution_shift(shape))
    ours = D.sample_timesteps(schedule, key, batch, distribution="uniform")
    np.testing.assert_allclose(np.asarray(ours), monai.numpy() / T, rtol=2e-6, atol=1e-7)


@pytest.mark.ref
@pytest.mark.parametrize("shape", [(32, 32, 32), (16, 16, 16), (64, 64, 32)])
@pytest.mark.parametrize(("loc", "scale"), [(0.0, 1.0), (0.3, 0.8)])
def test_logit_normal_training_draws_match_monai(shape, loc, scale):
    """MONAI draws from torch's LogisticNormal (a stick-breaking sigmoid of N(loc, scale^2)
    with one component: t = sigmoid(z)); the base normal is replaced by jaxcf's draws."""
    torch = pytest.importorskip("torch")
    key, batch = jax.random.key(4), 64
    normals = np.asarray(jax.random.normal(key, (batch,), jnp.float32))
    scheduler = _monai_rflow(sample_method="logit-normal", loc=loc, scale=scale)

    class FixedNormal:
        def sample(self, sample_shape):
            return torch.from_numpy(loc + scale * normals)[:, None]

    scheduler.distribution.base_dist = FixedNormal()
    monai = scheduler.sample_timesteps(torch.zeros(batch, 4, *shape))
    schedule = S.rectified_flow(T, shift=S.resolution_shift(shape))
    ours = D.sample_timesteps(
        schedule, key, batch, distribution="logit_normal", loc=loc, scale=scale
    )
    np.testing.assert_allclose(np.asarray(ours), monai.numpy() / T, rtol=2e-6, atol=1e-7)


# ---------------------------------------------------------------------- MAISI Linear betas


@pytest.mark.ref
def test_linear_betas_match_monais_ddpm_scheduler():
    """jaxcf's "linear" is MONAI DDPMScheduler's default (linear_beta 1e-4 -> 0.02); MAISI's
    released DDPM config (scaled_linear_beta 0.0015 -> 0.0195) is jaxcf's scaled_linear with
    those ends, which configs/linear_ms.py builds. MONAI builds its betas in float32."""
    schedulers = pytest.importorskip("monai.networks.schedulers")
    cases = [
        (schedulers.DDPMScheduler(T), S.linear(T)),
        (
            schedulers.DDPMScheduler(
                T, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195
            ),
            S.scaled_linear(T, 0.0015, 0.0195),
        ),
    ]
    for monai, ours in cases:
        np.testing.assert_allclose(ours.betas, monai.betas.numpy(), rtol=1e-6)
        np.testing.assert_allclose(ours.alphas_cumprod, monai.alphas_cumprod.numpy(), rtol=2e-5)
    maisi = schedulers.DDPMScheduler(
        T, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195
    )
    built = make_schedule(_load_config("linear_ms").diffusion)
    np.testing.assert_allclose(built.betas, maisi.betas.numpy(), rtol=1e-6)


def test_beta_ends_reach_the_beta_schedules_only():
    from jaxcf.errors import InputError

    diffusion = _load_config("linear_ms").diffusion
    diffusion.update(schedule="linear")
    ends = lambda d: np.asarray(make_schedule(d).betas)[[0, -1]]
    np.testing.assert_allclose(ends(diffusion), [0.0015, 0.0195])
    diffusion.update(beta_start=0.0, beta_end=0.0)
    np.testing.assert_allclose(ends(diffusion), [1e-4, 0.02])
    flow = _load_config("rflow_ms").diffusion
    flow.beta_end = 0.02
    with pytest.raises(InputError, match=r"diffusion\.beta_end applies to linear"):
        make_schedule(flow)


# ------------------------------------------------------------------------ configs and chain


def test_maisi_configs_follow_the_recipe():
    rflow = _load_config("rflow_ms").copy_and_resolve_references()
    linear = _load_config("linear_ms").copy_and_resolve_references()
    adni = _load_config("rflow_adni").copy_and_resolve_references()
    vae = _load_config("vae3d_ms").copy_and_resolve_references()
    # 128^3 volumes through the mri3d VAE (4x): 32^3 x 4 latents, MAISI's base, so no shift.
    for c in (rflow, linear, adni):
        assert (c.model.image_size, c.model.in_channels, c.model.spatial_dims) == (32, 4, 3)
        assert c.diffusion.space == "latent" and c.diffusion.condition == "prompt"
        assert c.vae.preset == vae.model.preset == "mri3d"
        assert c.diffusion.num_timesteps == 1000 and c.diffusion.cond_drop_prob == 0.2
    assert (rflow.diffusion.schedule, rflow.diffusion.prediction) == ("rectified_flow", "flow")
    assert rflow.diffusion.shift == 1.0 and rflow.diffusion.t_distribution == "uniform"
    assert rflow.sampler.num_steps == rflow.counterfactual.prompt_swap.num_steps == 30
    assert (linear.diffusion.schedule, linear.diffusion.prediction) == ("scaled_linear", "eps")
    assert (linear.diffusion.beta_start, linear.diffusion.beta_end) == (0.0015, 0.0195)
    assert rflow.diffusion.loss == linear.diffusion.loss == "l1"  # MAISI's L1Loss
    assert linear.sampler.num_steps == linear.counterfactual.prompt_swap.num_steps == 1000
    assert adni.data.dataset == "adni"
    assert adni.counterfactual.prompt_swap.target_prompt == "Subject has Alzheimer's disease"
    # The shift follows the volume size: 256^3 -> 64^3 latents -> (64^3 / 32^3)^(1/3) = 2.
    c = _load_config("rflow_ms")
    c.data.volume_size = 256
    assert (c.model.image_size, c.diffusion.shift) == (64, pytest.approx(2.0))
    assert _load_config("rflow_ms", "toy").diffusion.shift == pytest.approx(4 / 32)


@pytest.mark.parametrize("name", ["rflow_adni", "linear_ms"])
def test_toy_latent_configs_build_their_task(name):
    config = _load_config(name, "toy")
    task = make_task(config, jax.random.key(0))
    assert task.space == "latent" and task.condition == "prompt" and task.vae_mode == "joint"
    assert task.schedule.is_flow == (name == "rflow_adni")
    x0 = task.encode(task.frozen, jnp.zeros((1, 16, 16, 16, 1)))
    assert x0.shape == (1, 4, 4, 4, 4)
    abstract = jax.eval_shape(
        task.model_apply,
        task.params["model"],
        x0,
        jnp.zeros((1,)),
        {"context": jnp.zeros((1, 3, 32)), "context_mask": jnp.ones((1, 3), bool)},
    )
    assert abstract.shape == x0.shape


@pytest.mark.parametrize("name", ["rflow_adni", "linear_ms"])
def test_the_network_sees_maisis_time_scale(name):
    """A flow time t in [0, 1] reaches the network as t * 1000 (MAISI feeds MONAI's
    RFlowScheduler times, t * num_train_timesteps); discrete timesteps pass unchanged."""
    task = make_task(_load_config(name, "toy"), jax.random.key(0))
    seen = []
    task.model_apply = lambda params, x, t, cond, **kwargs: seen.append(t) or x
    t = jnp.array([0.25]) if task.schedule.is_flow else jnp.array([250])
    cond = {"context": jnp.zeros((1, 3, 32)), "context_mask": jnp.ones((1, 3), bool)}
    task.model_fn(task.params, task.frozen)(jnp.zeros((1, 4, 4, 4, 4)), t, cond)
    assert float(seen[0][0]) == 250.0


def test_vae_mask_weight_adds_l1_on_the_lesion_voxels():
    """vae_loss.mask_weight w: loss = mean((1 + w * mask) |recon - x|) + kl term, the
    reported l1 unweighted; without lesion masks in the batch it is refused by name."""
    from jaxcf.errors import InputError

    config = _load_config("vae3d_ms", "toy")
    size = int(config.data.volume_size)
    x = jax.random.uniform(jax.random.key(1), (1, size, size, size, 1), minval=-1, maxval=1)
    seg = jnp.zeros((1, size, size, size), jnp.uint8).at[0, 2:5, 3:6, 4:7].set(1)
    batch, key = {"image": x, "seg": seg}, jax.random.key(2)
    plain = make_task(config, jax.random.key(0))
    loss0, m0 = plain.loss(plain.params, {}, batch, key)
    config.vae_loss.mask_weight = 9.0
    weighted = make_task(config, jax.random.key(0))
    loss9, m9 = weighted.loss(weighted.params, {}, batch, key)
    assert float(m9["l1"]) == pytest.approx(float(m0["l1"]), rel=1e-6)
    # The extra term is 9 * (lesion L1) * (lesion fraction of the voxels): 27 of size^3.
    extra = 9.0 * float(m9["l1_mask"]) * 27 / size**3
    assert float(loss9 - loss0) == pytest.approx(extra, rel=1e-4)
    with pytest.raises(InputError, match=r"mask_weight=9\.0 needs lesion masks"):
        weighted.loss(weighted.params, {}, {"image": x}, key)


def test_vae3d_then_rflow_then_prompt_swap(tmp_path, capsys):
    """The command chain of configs/rflow_ms.py at toy size: train the 3-D VAE, train the
    latent RFlow model on its latents (--config.vae.checkpoint=the VAE's workdir), then the
    prompt swap of one synthetic subject, written as NIfTI on the 16^3 cube."""
    from jaxcf import train as train_cli
    from jaxcf.checkpoint import Checkpoints, abstract_like
    from jaxcf.counterfactual import __main__ as counterfactual_cli
    from jaxcf.inference import load_trained

    vae_dir, rflow_dir, out = tmp_path / "vae3d", tmp_path / "rflow", tmp_path / "swap"
    steps = ["--config.train.num_steps=2", "--config.train.checkpoint_every=2"]
    argv = ["train", f"--config={REPO / 'configs' / 'vae3d_ms.py'}:toy", f"--workdir={vae_dir}"]
    # Lesion-weighted L1: the MS volumes' batches carry the lesion masks.
    weighted = "--config.vae_loss.mask_weight=50"
    assert train_cli.main([*argv, *steps, weighted]) == 0, capsys.readouterr().err
    argv = [
        "train",
        f"--config={REPO / 'configs' / 'rflow_ms.py'}:toy",
        f"--workdir={rflow_dir}",
        f"--config.vae.checkpoint={vae_dir}",
        "--config.vae.allow_untrained=False",
    ]
    assert train_cli.main([*argv, *steps]) == 0, capsys.readouterr().err
    assert "vae.checkpoint is empty" not in capsys.readouterr().err

    # The latent model's frozen VAE is the VAE run's EMA, not a fresh network.
    trained = load_trained(rflow_dir)
    assert trained.config.vae.checkpoint == str(vae_dir)
    assert trained.task.schedule.shift == pytest.approx(4 / 32)
    ckpt = Checkpoints(vae_dir)
    wanted = {"ema": {"model": abstract_like(trained.frozen["vae"])}}
    ema = ckpt.restore_subtrees(wanted)["ema"]["model"]
    ckpt.close()
    for got, want in zip(jax.tree.leaves(trained.frozen["vae"]), jax.tree.leaves(ema), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    argv = [
        "counterfactual",
        f"--config={REPO / 'configs' / 'rflow_ms.py'}:toy",
        f"--checkpoint={rflow_dir}",
        "--method=prompt_swap",
        f"--out={out}",
        "--count=1",
        "--config.counterfactual.prompt_swap.num_steps=3",
    ]
    assert counterfactual_cli.main(argv) == 0, capsys.readouterr().err
    assert "prompt_swap (synthetic): 1 subject(s)" in capsys.readouterr().out
    volumes = {
        kind: nib.load(out / f"synthetic000_{kind}.nii.gz")
        for kind in ("factual", "counterfactual", "difference")
    }
    for image in volumes.values():
        assert image.shape == (16, 16, 16) and np.isfinite(image.get_fdata()).all()
    np.testing.assert_allclose(
        volumes["difference"].get_fdata(),
        volumes["counterfactual"].get_fdata() - volumes["factual"].get_fdata(),
        atol=1e-5,
    )
    assert (out / "synthetic000_panel.png").is_file()

    # evaluate --method=prompt_swap on the latent model: the real volumes are also measured
    # through its VAE (what a latent model can draw at all).
    from jaxcf import evaluate

    evaluated = tmp_path / "evaluated"
    argv = [
        "evaluate",
        f"--config={REPO / 'configs' / 'rflow_ms.py'}:toy",
        f"--checkpoint={rflow_dir}",
        "--method=prompt_swap",
        f"--out={evaluated}",
        "--split=train",
        "--config.counterfactual.prompt_swap.num_steps=2",
        "--config.eval.synthetic_subjects=2",
        "--config.eval.guidance_scales=(1.0,)",
    ]
    assert evaluate.main(argv) == 0, capsys.readouterr().err
    assert "| through the VAE |" in capsys.readouterr().out
    summary = json.loads((evaluated / "metrics.json").read_text())
    assert all(r["autoencoded_lesion_voxels"] is not None for r in summary["real_reference"])
