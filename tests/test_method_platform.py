"""The method platform: registry, plug-in contract, runner (chunks, keys, conditions,
sharding), pinned by numbers with a closed-form model (jaxcf.diffusion.mixture_denoiser).

The "trained model" is the exact denoiser of a tiny labelled set (as in
test_counterfactual.py): four smooth anatomies, each healthy (label 0) and with a bright
square (label 1); label 2 is the null condition. Its "weights" are the component means,
passed as an argument like a network's parameters.
"""

from __future__ import annotations

import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from test_counterfactual import HEALTHY_IMAGES, SQUARES, TUMOUR_IMAGES

from jaxcf import diffusion as D
from jaxcf.counterfactual import MethodModel, MethodRunner, null_label, registry
from jaxcf.counterfactual.diffscm import diffscm
from jaxcf.counterfactual.promptable import promptable_counterfactual

SCHEDULE = D.linear()
NUM_CLASSES = 2
STD = 0.05


def _apply(means, x_t, t, cond):
    labels = jnp.array([0] * 4 + [1] * 4)
    return D.mixture_denoiser(SCHEDULE, means, STD, labels=labels, null_label=NUM_CLASSES)(
        x_t, t, cond
    )


MEANS = jnp.asarray(np.concatenate([HEALTHY_IMAGES, TUMOUR_IMAGES]))
MODEL = MethodModel(
    apply=_apply,
    schedule=SCHEDULE,
    null_cond=null_label(NUM_CLASSES),
    num_classes=NUM_CLASSES,
    x0_transform=D.static_clip,
)


def _config(batch_size: int = 3, **method) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict({"method": "diffscm", "batch_size": batch_size, "seed": 0})
    config.update(registry.default_configs())
    config.diffscm.update(num_steps=20)
    config.promptable.update(num_steps=10)
    for name, values in method.items():
        config[name].update(values)
    return config


def _mesh(data: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"data": data, "fsdp": 1})


# Seven rows: not a multiple of the chunk size (3), so the last chunk is padded.
IMAGES = np.concatenate([TUMOUR_IMAGES, HEALTHY_IMAGES[:3]])
IS_TUMOUR = np.array([True] * 4 + [False] * 3)


def test_diffscm_through_the_runner_equals_the_function_and_heals_the_square():
    runner = MethodRunner(MODEL, MEANS, "diffscm", _config(), _mesh(1), progress=False)
    assert runner.chunk == 3
    out = runner({"image": IMAGES})
    assert out["counterfactual"].shape == IMAGES.shape and out["heatmap"].shape == (7, 16, 16)
    # The same counterfactual as the functional form on all rows at once: chunking and
    # padding change nothing (Diff-SCM is per-sample and deterministic).
    direct = diffscm(
        MODEL.model_fn(MEANS),
        SCHEDULE,
        jnp.asarray(IMAGES),
        null_cond={"label": jnp.array([NUM_CLASSES])},
        target_cond={"label": jnp.zeros((7,), jnp.int32)},
        num_steps=20,
    )
    np.testing.assert_allclose(out["counterfactual"], direct["counterfactual"], atol=1e-5)
    # Toward "healthy": the square goes, healthy rows stay. With null and target swapped
    # the decoder would follow the null condition (a reconstruction) and the square stay.
    heat = out["heatmap"]
    assert heat[:4][SQUARES].min() > 0.5  # the removed squares
    assert heat[:4][~SQUARES].max() < 0.2
    assert heat[4:].max() < 0.2  # healthy inputs are left alone
    healed = np.abs(out["counterfactual"][:4] - HEALTHY_IMAGES).max()
    assert healed < 0.2


def test_the_target_label_comes_from_the_method_config():
    # Target "tumour" on healthy inputs (regeneration): no change is possible without a
    # prompt (Diff-SCM keeps the anatomy), but the decoder must follow label 1, not 0.
    config = _config(diffscm={"target_label": 1})
    runner = MethodRunner(MODEL, MEANS, "diffscm", config, _mesh(1), progress=False)
    toward_tumour = runner({"image": HEALTHY_IMAGES})["heatmap"]
    healthy = MethodRunner(MODEL, MEANS, "diffscm", _config(), _mesh(1), progress=False)
    assert (
        toward_tumour[SQUARES].mean()
        > 3 * healthy({"image": HEALTHY_IMAGES})["heatmap"][SQUARES].mean()
    )
    with pytest.raises(ValueError, match="target label 5 is not a class"):
        MethodRunner(MODEL, MEANS, "diffscm", _config(diffscm={"target_label": 5}), progress=False)


def test_promptable_chunks_get_their_own_keys():
    config = _config(promptable={"region": "file"})
    runner = MethodRunner(MODEL, MEANS, "promptable", config, _mesh(1), progress=False)
    region = np.zeros(IMAGES.shape[:-1], bool)
    region[:, :, :8] = True  # the left half, which holds every square
    images = IMAGES * 0 + TUMOUR_IMAGES[0]  # seven copies of one image
    # Brain masks need a background of -1; the anatomies are all brain, so cut nothing.
    out = runner({"image": images, "given_region": region})
    np.testing.assert_array_equal(out["region"] > 0, region)
    # Row r of chunk c is what promptable_counterfactual gives with key fold_in(key(0),
    # first row of c) on that chunk (the last one padded by repeating its last row).
    for start in (0, 3, 6):
        rows = np.arange(start, start + 3).clip(max=6)
        expected = promptable_counterfactual(
            MODEL.model_fn(MEANS),
            SCHEDULE,
            jnp.asarray(images[rows]),
            jnp.asarray(region[rows]),
            key=jax.random.fold_in(jax.random.key(0), start),
            cond={"label": jnp.zeros((3,), jnp.int32)},
            null_cond={"label": jnp.array([NUM_CLASSES])},
            num_steps=10,
            x0_transform=D.static_clip,
        )["counterfactual"]
        n = min(3, 7 - start)
        np.testing.assert_allclose(
            out["counterfactual"][start : start + n], expected[:n], atol=1e-5
        )
    # Same input, different chunks: different noise, so different samples in the prompt.
    assert np.abs(out["counterfactual"][0] - out["counterfactual"][3]).max() > 1e-3


def test_runner_on_eight_devices_equals_one_device():
    assert jax.device_count() == 8  # tests/conftest.py fakes an 8-device CPU
    config = _config(batch_size=3)
    one = MethodRunner(MODEL, MEANS, "diffscm", config, _mesh(1), progress=False)
    eight = MethodRunner(MODEL, MEANS, "diffscm", config, _mesh(8), progress=False)
    assert eight.chunk == 8  # rounded up to a multiple of the batch devices
    sharding = eight.mesh.shape
    assert sharding["data"] == 8
    a, b = one({"image": IMAGES}), eight({"image": IMAGES})
    # The same float32 arithmetic per sample; XLA may fuse differently per shard shape, so
    # a few ulps of the O(1) values over 2 x 15 steps: 1e-5.
    np.testing.assert_allclose(a["counterfactual"], b["counterfactual"], atol=1e-5)
    np.testing.assert_allclose(a["heatmap"], b["heatmap"], atol=1e-5)


TOY_METHOD = '''
"""A toy method: the counterfactual is the input scaled by cfg.factor."""
import ml_collections

LABEL = "Toy"


def default_config():
    return ml_collections.ConfigDict({"factor": 0.5})


def build(model, cfg):
    factor = float(cfg.factor)

    def fn(weights, batch, key):
        x = model.encode(weights, batch["image"])
        return {"counterfactual": factor * x, "heatmap": abs(x - factor * x).mean(-1)}

    return fn
'''


def test_a_new_method_is_one_file_and_one_registry_line(tmp_path, monkeypatch):
    (tmp_path / "toy_method.py").write_text(textwrap.dedent(TOY_METHOD))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.METHODS, "toy", "toy_method")  # the registry line
    try:
        assert "toy" in registry.names() and registry.label("toy") == "Toy"
        config = _config()
        config.toy = registry.default_configs().toy
        out = MethodRunner(MODEL, MEANS, "toy", config, _mesh(1), progress=False)({"image": IMAGES})
        np.testing.assert_allclose(out["counterfactual"], 0.5 * IMAGES, atol=1e-7)
    finally:
        sys.modules.pop("toy_method", None)


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown counterfactual method 'magic'; known: diffscm"):
        registry.get("magic")


def _healthy_proxies(images: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Each slice with its tumour pixels replaced, per channel, by the median of the rest
    of its brain: a stand-in for the healthy twin a phantom does not have."""
    healthy = images.copy()
    for i, (image, tumour) in enumerate(zip(images, seg > 0, strict=True)):
        brain = (image > -1.0).any(-1) & ~tumour
        for c in range(image.shape[-1]):
            healthy[i, ..., c][tumour] = np.median(image[..., c][brain])
    return healthy


def test_closed_form_model_through_the_runner_and_the_evaluation(tmp_path):
    """Phantom BraTS slices -> MethodRunner -> post-processing -> streaming metrics, with
    the exact denoiser of {healthy proxies (label 0), the slices themselves (label 1)}:
    Diff-SCM toward "healthy" must find the tumours; toward "tumour" (target and null
    roles swapped) it reconstructs the input and finds nothing."""
    import importlib.util
    import pathlib

    from jaxcf.evaluation import benchmark
    from jaxcf.experiments.segmentation import segment_slices
    from jaxcf.training.data import ensure_data

    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "quickstart.py"
    spec = importlib.util.spec_from_file_location("quickstart_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = ensure_data(module.get_config("toy").data, tmp_path)
    rows = list(benchmark.slice_batches(data, "test", "tumour", 12))
    images = np.concatenate([r["image"] for r in rows])
    seg = np.concatenate([r["seg"] for r in rows])
    assert len(images) >= 4
    means = jnp.asarray(np.concatenate([_healthy_proxies(images, seg), images]))
    labels = jnp.array([0] * len(images) + [1] * len(images))

    def apply(component_means, x_t, t, cond):
        return D.mixture_denoiser(
            SCHEDULE, component_means, 0.02, labels=labels, null_label=NUM_CLASSES
        )(x_t, t, cond)

    model = MethodModel(
        apply=apply, schedule=SCHEDULE, null_cond=null_label(NUM_CLASSES), num_classes=NUM_CLASSES
    )

    def evaluate(target_label: int) -> dict:
        config = _config(batch_size=5, diffscm={"target_label": target_label})
        runner = MethodRunner(model, means, "diffscm", config, _mesh(1), progress=False)

        def segment(batch):
            out, masks = segment_slices(runner, batch, "paper")
            return out["counterfactual"], out["heatmap"], masks

        results, _ = benchmark.evaluate_split(
            {"diffscm": segment},
            data,
            "test",
            batch_size=runner.chunk,
            slices="tumour",
            max_items=12,
            bins=1000,
            baseline_threshold=0.5,
            progress=False,
        )
        return results["diffscm"]

    healthy, swapped = evaluate(0), evaluate(1)
    assert healthy["slices"] == len(images)
    # Measured: AUPRC and ideal Dice 1.0 at a heatmap threshold of 0.37 (the tumour removed:
    # |x - x_cf| is the tumour's contrast); the Otsu masks' Dice 0.81, because the phantoms'
    # edema fades toward its edge and a per-slice Otsu threshold cuts that faint rim.
    assert healthy["dice"] > 0.75 and healthy["auprc"] > 0.9 and healthy["ideal_dice"] > 0.9
    assert healthy["ideal_threshold"] > 0.3
    # Toward "tumour" the counterfactual is the input: the best threshold sits in the
    # reconstruction noise (measured 0.002) and the Otsu masks are noise (Dice 0.5).
    assert swapped["ideal_threshold"] < 0.05
    assert swapped["dice"] < healthy["dice"] - 0.3


def test_an_old_flat_counterfactual_group_keeps_its_settings():
    from jaxcf.inference import _add_method_defaults

    config = ml_collections.ConfigDict(
        {"counterfactual": {"method": "diffscm", "num_steps": 50, "healthy_label": 1}}
    )
    config.counterfactual.region = "brain"
    _add_method_defaults(config)
    assert config.counterfactual.diffscm.num_steps == 50
    assert config.counterfactual.promptable.num_steps == 50
    assert config.counterfactual.promptable.region == "brain"
    assert config.counterfactual.diffscm.target_label == 1
    assert config.counterfactual.diffscm.strength == 0.75  # a default where none was set
