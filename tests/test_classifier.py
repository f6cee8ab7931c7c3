"""Paper 004's text-alignment judge: the DenseNet (MONAI layout, GroupNorm), the classifier
task and configs, and jaxcf.evaluation.alignment on a trained toy run."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcf import models
from jaxcf.convert.common import CheckpointError
from jaxcf.convert.densenet import densenet_params
from jaxcf.errors import InputError
from jaxcf.evaluation.alignment import accuracy, load_classifier
from jaxcf.training.loop import train_and_evaluate
from jaxcf.training.tasks import ClassifierTask, make_task

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = {"family": "densenet", "preset": "densenet_tiny3d"}


def load_config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# -- the network -------------------------------------------------------------------------------


@pytest.mark.parametrize(("dims", "size"), [(3, 16), (2, 32)])
def test_densenet_maps_a_batch_to_one_logit_vector_per_item(dims, size, key):
    config = dict(TINY, spatial_dims=dims, in_channels=2, num_classes=4)
    apply_fn, params = models.build(dict(config, dropout=0.5), key)
    forward = jax.jit(apply_fn)
    x = jax.random.normal(key, (3, *(size,) * dims, 2))
    logits = forward(params, x)
    assert logits.shape == (3, 4) and logits.dtype == jnp.float32
    # Items are independent (GroupNorm: no batch statistics): the same item in another
    # batch gets the same logits.
    other = forward(params, jnp.concatenate([x[1:2], -x[:2]]))
    np.testing.assert_allclose(other[0], logits[1], rtol=1e-5, atol=1e-5)
    # Dropout only with a key.
    dropped = jax.jit(lambda p, x, k: apply_fn(p, x, dropout_key=k))(params, x, key)
    assert np.abs(np.asarray(dropped - logits)).max() > 1e-3


def test_densenet_refuses_inputs_it_was_not_built_for(key):
    apply_fn, params = models.build(dict(TINY, image_size=16), key)
    with pytest.raises(InputError, match=r"expects x of shape \(B, D, H, W, 1\)"):
        apply_fn(params, jnp.zeros((1, 16, 16, 16, 2)))
    with pytest.raises(InputError, match=r"built for 16-voxel sides"):
        apply_fn(params, jnp.zeros((1, 32, 32, 32, 1)))
    apply_fn, params = models.build(TINY, key)  # any size, but not below the downsampling
    with pytest.raises(InputError, match=r"each side must be >= 8"):
        apply_fn(params, jnp.zeros((1, 4, 16, 16, 1)))


def test_densenet121_3d_has_the_published_layout():
    params = models.abstract_params({"family": "densenet", "preset": "densenet121_3d"})
    tree = nnx.to_pure_dict(params)
    assert [len(tree["blocks"][i]) for i in range(4)] == [6, 12, 24, 16]
    assert len(tree["transitions"]) == 3
    assert tree["conv0"]["kernel"].shape == (7, 7, 7, 1, 64)
    # 64 + 6*32 = 256 -> 128 + 12*32 = 512 -> 256 + 24*32 = 1024 -> 512 + 16*32 = 1024.
    assert tree["out"]["kernel"].shape == (1024, 3)
    assert tree["blocks"][3][15]["conv1"]["kernel"].shape == (1, 1, 1, 992, 128)


@pytest.mark.ref
def test_densenet121_3d_parameter_count_equals_monai():
    monai = pytest.importorskip("monai")
    reference = monai.networks.nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=3)
    expected = sum(p.numel() for p in reference.parameters())
    params = models.abstract_params({"family": "densenet", "preset": "densenet121_3d"})
    assert models.param_count(params) == expected == 11_245_699


@pytest.mark.ref
def test_densenet_equals_monai_with_group_norm(key):
    """MONAI's DenseNet with norm=("group", ...) and its weights -> jaxcf, same logits
    (eval mode; odd sides exercise the pooling's floor rounding)."""
    torch = pytest.importorskip("torch")
    monai = pytest.importorskip("monai")
    torch.manual_seed(0)
    sizes = dict(init_features=16, growth_rate=8, block_config=(2, 3), bn_size=4)
    reference = monai.networks.nets.DenseNet(
        spatial_dims=3, in_channels=2, out_channels=3, norm=("group", {"num_groups": 8}), **sizes
    ).eval()
    with torch.no_grad():  # norm affines and the output bias off their trivial init
        for name, p in reference.named_parameters():
            if "norm" in name or name.endswith("out.bias"):
                p.add_(0.3 * torch.randn_like(p))
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    config = dict(family="densenet", in_channels=2, num_classes=3, groups=8, **sizes)
    apply_fn, params = models.build(config, key)
    params = densenet_params(state, params)
    x = np.random.default_rng(0).normal(size=(2, 2, 21, 18, 16)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    got = jax.jit(apply_fn)(params, jnp.asarray(np.moveaxis(x, 1, -1)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-5)


def test_converter_refuses_batchnorm_and_foreign_state_dicts(key):
    _, params = models.build(TINY, key)
    with pytest.raises(CheckpointError, match=r"BatchNorm DenseNet.*GroupNorm"):
        densenet_params({"features.norm0.running_mean": np.zeros(16)}, params)
    with pytest.raises(CheckpointError, match=r"missing keys: features\.conv0\.weight"):
        densenet_params({"encoder.weight": np.zeros(3)}, params)


# -- the task and its configs ------------------------------------------------------------------


def test_an_uninformative_classifier_loses_log_k(key):
    config = load_config("classifier_ms", "toy")
    task = make_task(config, key)
    assert isinstance(task, ClassifierTask) and task.num_classes == 3
    params = jax.tree.map(jnp.zeros_like, task.params)  # every logit 0
    batch = {"image": jnp.ones((4, 16, 16, 16, 1)), "label": jnp.array([0, 1, 2, 0])}
    loss, metrics = jax.jit(task.loss)(params, {}, batch, key)
    np.testing.assert_allclose(loss, math.log(3), rtol=1e-6)
    assert float(metrics["accuracy"]) == 0.5  # the arg-max of a tie is class 0
    with pytest.raises(InputError, match="no 'label' field"):
        task.loss(params, {}, {"image": batch["image"]}, key)


def test_unknown_task_lists_every_task(key):
    config = load_config("classifier_ms", "toy")
    config.train.task = "registration"
    with pytest.raises(InputError, match="vae, classifier, segmentation, refiner"):
        make_task(config, key)


def _data(config) -> dict:
    return config.copy_and_resolve_references().data.to_dict()


@pytest.mark.parametrize("arg", [None, "toy"])
def test_the_judge_sees_the_generator_data(arg):
    for dataset in ("ms", "adni"):
        judge = _data(load_config(f"classifier_{dataset}", arg))
        wdm = _data(load_config(f"wdm_{dataset}", arg))
        assert judge.pop("batch_size") >= 1 and wdm.pop("batch_size") >= 1
        assert judge == wdm


def test_phantom32_judge_and_generator_share_their_data():
    judge = _data(load_config("classifier_ms", "phantom32"))
    wdm = _data(load_config("wdm_ms", "phantom32"))
    assert judge.pop("augment") and not wdm.pop("augment")  # the training stream only
    assert judge == wdm


def test_phantom32_variants_render_the_same_phantoms():
    """Paper 004's phantom proof: generator, judge, VAE and latent model on one data set,
    and the latent model on the VAE variant's preset (8^3 latents of 32^3 volumes)."""
    reference = _data(load_config("wdm_ms", "phantom32"))
    for name in ("classifier_ms", "vae3d_ms", "rflow_ms"):
        data = _data(load_config(name, "phantom32"))
        for field in ("phantom", "volume_size", "batch_size", "dataset", "value_range"):
            assert data[field] == reference[field], (name, field)
    vae, latent = load_config("vae3d_ms", "phantom32"), load_config("rflow_ms", "phantom32")
    assert vae.model.preset == latent.vae.preset == "mri3d_small"
    assert latent.copy_and_resolve_references().model.image_size == 8


def test_classifier_shape_and_classes_follow_the_data():
    config = load_config("classifier_ms")
    config.data.update(dataset="brats2021", volume_size=64)
    _, kwargs = models.model_kwargs(config.model)
    assert (kwargs["image_size"], kwargs["in_channels"], kwargs["num_classes"]) == (64, 4, 2)
    _, kwargs = models.model_kwargs(load_config("classifier_adni").model)
    assert (kwargs["image_size"], kwargs["in_channels"], kwargs["num_classes"]) == (128, 1, 3)
    assert kwargs["block_config"] == (6, 12, 24, 16)


# -- a trained toy judge and alignment -----------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """classifier_ms:toy trained for 30 steps (a few seconds after compiling)."""
    workdir = tmp_path_factory.mktemp("classifier_ms_toy")
    config = load_config("classifier_ms", "toy")
    config.train.update(num_steps=30, checkpoint_every=30)
    config.optim.ema_decay = 0.5  # the judge of 30 steps is the last weights, nearly
    train_and_evaluate(config, workdir)
    return workdir


def test_the_classifier_learns_its_toy_problem(trained):
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    loss = [r["loss"] for r in rows]
    acc = [r["accuracy"] for r in rows]
    assert len(rows) == 30
    assert np.mean(loss[-5:]) < 0.6 * np.mean(loss[:5]), loss
    assert np.mean(acc[-5:]) == 1.0 and np.mean(acc[:5]) < 1.0, acc


def test_alignment_accuracy_of_the_trained_judge(trained):
    judge = load_classifier(trained)
    assert judge.step == 30 and judge.input_shape == (16, 16, 16, 1)
    result = judge.split_accuracy("train")
    assert result["accuracy"] == 1.0 and result["count"] >= 2
    assert result["confusion"].sum() == result["count"]
    prepared = trained / "prepared" / "ms_volumes"
    volumes = np.load(prepared / "image.npy")
    probs = judge.predict(volumes, batch_size=3)  # a padded last chunk when N % 3
    assert probs.shape == (len(volumes), 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(judge.predict(volumes[:1], batch_size=3), probs[:1], atol=1e-6)
    chosen = probs.argmax(-1)
    assert judge.alignment_accuracy(volumes, chosen) == 1.0
    assert judge.alignment_accuracy(volumes, (chosen + 1) % 3) == 0.0
    half = np.where(np.arange(len(chosen)) % 2 == 0, chosen, (chosen + 1) % 3)
    assert judge.alignment_accuracy(volumes, half) == accuracy(probs, half)
    assert accuracy(probs, half) == pytest.approx(math.ceil(len(half) / 2) / len(half))


def test_alignment_refuses_what_it_cannot_judge(trained, tmp_path):
    judge = load_classifier(trained)
    volumes = np.zeros((2, 16, 16, 16, 1), np.float32)
    with pytest.raises(InputError, match=r"trained on volumes of shape \(N, 16, 16, 16, 1\)"):
        judge.predict(np.zeros((2, 32, 32, 32, 1), np.float32))
    with pytest.raises(InputError, match=r"trained on volumes of shape"):
        judge.predict(volumes[0])  # one volume without its batch axis
    bad = volumes.copy()
    bad[1, 3, 3, 3, 0] = np.nan
    with pytest.raises(InputError, match=r"volumes \[1\] hold NaN"):
        judge.predict(bad)
    with pytest.raises(InputError, match=r"in \[0, 3\)"):
        judge.alignment_accuracy(volumes, [0, 3])
    with pytest.raises(InputError, match=r"\(2,\) integers"):
        judge.alignment_accuracy(volumes, [0.0, 1.0])
    # A workdir of another kind of model: refused by name, before any checkpoint is read.
    config = json.loads((trained / "config.json").read_text())
    config["train"]["task"] = "diffusion"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"train\.task is 'diffusion', not a classifier"):
        load_classifier(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_classifier(tmp_path / "nowhere")
