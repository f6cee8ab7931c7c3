"""Schedules, respacing strings, flow time grids and the RePaint trajectory."""

import numpy as np
import pytest

from jaxcf import diffusion as D


def test_linear_schedule_endpoints_and_monotone():
    s = D.linear()
    betas = np.asarray(s.betas)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    abar = np.asarray(s.alphas_cumprod)
    assert np.all(np.diff(abar) < 0)
    # float64 reference of the product.
    assert abar[-1] == pytest.approx(np.prod(1 - np.linspace(1e-4, 0.02, 1000)), rel=1e-5)


def test_cosine_schedule_follows_its_definition_and_caps_beta():
    s = D.cosine(1000)
    t = np.arange(1, 1001) / 1000
    f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod)[:-1], (f(t) / f(0))[:-1], rtol=1e-5)
    assert np.asarray(s.betas).max() == pytest.approx(0.999)


def test_from_alphas_cumprod_roundtrip():
    s = D.scaled_linear()
    again = D.from_alphas_cumprod(np.asarray(s.alphas_cumprod))
    np.testing.assert_allclose(again.betas, s.betas, rtol=1e-4)
    np.testing.assert_array_equal(again.alphas_cumprod, s.alphas_cumprod)


def test_alpha_sigma_discrete_and_flow():
    s = D.linear()
    a, sig = s.alpha_sigma(np.array([-1, 0, 999]))
    np.testing.assert_allclose(a**2 + sig**2, 1.0, atol=1e-6)
    assert float(a[0]) == 1.0 and float(sig[0]) == 0.0  # t = -1: clean data
    f = D.rectified_flow()
    a, sig = f.alpha_sigma(np.array([0.0, 0.25, 1.0], np.float32))
    np.testing.assert_allclose(a, [1.0, 0.75, 0.0])
    np.testing.assert_allclose(sig, [0.0, 0.25, 1.0])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(prediction="velocity"), "prediction must be"),
        (dict(variance="learned"), "variance must be"),
        (dict(prediction="flow"), "rectified-flow schedule"),
    ],
)
def test_bad_schedule_arguments_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        D.linear(**kwargs)


def test_guided_diffusion_section_strings():
    np.testing.assert_array_equal(D.space_timesteps(1000, "ddim100"), np.arange(0, 1000, 10))
    np.testing.assert_array_equal(D.space_timesteps(1000, "ddim25"), np.arange(0, 1000, 40))
    steps = D.space_timesteps(300, "10,10,20")
    assert len(steps) == 40
    # First section [0, 100): 10 steps with stride 99/9 = 11; last section [200, 300): 20.
    np.testing.assert_array_equal(steps[:10], np.arange(0, 100, 11))
    assert steps[10] == 100 and steps[19] == 199 and steps[-1] == 299
    with pytest.raises(ValueError, match="cannot make exactly"):
        D.space_timesteps(1000, "ddim999")  # ceil(1000 / s) never equals 999
    with pytest.raises(ValueError, match="not one of"):
        D.space_timesteps(1000, "fast")


def test_respace_spacings():
    np.testing.assert_array_equal(D.respace(1000, 4, "leading"), [750, 500, 250, 0])
    np.testing.assert_array_equal(D.respace(1000, 4, "trailing"), [999, 749, 499, 249])
    np.testing.assert_array_equal(D.respace(1000, 4, "linspace"), [999, 666, 333, 0])
    np.testing.assert_array_equal(D.respace(1000, 100, "ddim100"), np.arange(990, -1, -10))
    with pytest.raises(ValueError, match="gives 100 steps but num_steps=50"):
        D.respace(1000, 50, "ddim100")
    with pytest.raises(ValueError, match="num_steps must be"):
        D.respace(1000, 0)


def test_flow_times_and_shift():
    grid = D.flow_times(4)
    np.testing.assert_allclose(grid, [1.0, 0.75, 0.5, 0.25, 0.0])
    shifted = D.flow_times(4, shift=3.0)
    np.testing.assert_allclose(shifted, 3 * grid / (1 + 2 * grid), rtol=1e-6)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0 and np.all(shifted >= grid)
    diffusers_like = D.flow_times(4, spacing="diffusers")
    np.testing.assert_allclose(diffusers_like[:-1], np.linspace(1, 0.001, 4), rtol=1e-6)
    assert D.resolution_shift((64, 64, 64)) == pytest.approx(2.0)
    assert D.resolution_shift((32, 32, 32), scale=1.5) == pytest.approx(1.5)


def test_repaint_schedule_structure():
    traj = D.repaint_schedule(250, jump_length=10, jump_n_sample=10)
    assert traj[0] == 249 and traj[-1] == -1
    steps = np.diff(traj)
    assert set(np.unique(steps)) == {-1, 1}
    # 24 jump points (0, 10, ..., 230), each revisited 9 extra times, 10 steps up and down.
    assert int(np.sum(steps == 1)) == 24 * 9 * 10
    assert int(np.sum(steps == -1)) == 250 + 24 * 9 * 10
    np.testing.assert_array_equal(D.repaint_schedule(5, 2, 1), [4, 3, 2, 1, 0, -1])
    np.testing.assert_array_equal(
        D.repaint_schedule(6, 2, 2), [5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]
    )
